import datetime as dt

import pytest
from labpipe.ingest.naming import FolderNameError, parse_scan_name, parse_session_name, session_folder_name

TODAY = dt.date(2026, 11, 22)


def test_parses_the_documented_example():
    name = parse_session_name("XX_ANM-2172_2026-02-10_sess9FY6AIRM", today=TODAY)
    assert (name.initials, name.animal_id, name.session_id) == ("XX", "ANM-2172", "9FY6AIRM")
    assert name.session_date == dt.date(2026, 2, 10)
    assert parse_scan_name("scan9FY6AIRM") == "9FY6AIRM"


def test_round_trip_with_the_folder_name_builder():
    folder = session_folder_name("ABC", "M12", dt.date(2025, 12, 31), "A1B2C3D4")
    assert parse_session_name(folder, today=TODAY).session_id == "A1B2C3D4"


@pytest.mark.parametrize(
    ("folder", "reason"),
    [
        ("X_ANM-1_2026-02-10_sessAAAAAAAA", "initials token 'X'"),
        ("ABCD_ANM-1_2026-02-10_sessAAAAAAAA", "initials token 'ABCD'"),
        ("xx_ANM-1_2026-02-10_sessAAAAAAAA", "2-3 uppercase letters"),
        ("XX_ANM#1_2026-02-10_sessAAAAAAAA", "animal id token 'ANM#1'"),
        ("XX_ANM-1_2026-13-01_sessAAAAAAAA", "not a real calendar date"),
        ("XX_ANM-1_2026-02-29_sessAAAAAAAA", "not a real calendar date"),  # 2026 is no leap year
        ("XX_ANM-1_20260210_sessAAAAAAAA", "expected an ISO date"),
        ("XX_ANM-1_2027-02-10_sessAAAAAAAA", "lies in the future"),
        ("XX_ANM-1_2026-02-10_sesAAAAAAAA", "session token 'sesAAAAAAAA'"),
        ("XX_ANM-1_2026-02-10_sessAAAAAAA", "expected exactly 8 characters"),
        ("XX_ANM-1_2026-02-10_sessaaaaaaaa", "session id 'aaaaaaaa'"),
        ("XX_ANM_1_2026-02-10_sessAAAAAAAA", "got 5"),
        ("XX_2026-02-10_sessAAAAAAAA", "got 3"),
    ],
)
def test_rejections_name_the_token_and_what_was_expected(folder, reason):
    with pytest.raises(FolderNameError, match=None) as caught:
        parse_session_name(folder, today=TODAY)
    assert reason in str(caught.value)


@pytest.mark.parametrize("folder", ["scan123", "SCAN9FY6AIRM", "scan9FY6AIRMX", "notes"])
def test_bad_scan_folders(folder):
    with pytest.raises(FolderNameError):
        parse_scan_name(folder)
