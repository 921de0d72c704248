import json

from labpipe.ingest.share import modality_of, scan_share
from labpipe.ingest.simulate import simulate_share


def test_simulated_share_is_sorted_into_accepted_and_rejected(tmp_path):
    sim = simulate_share(tmp_path / "share")
    result = scan_share(tmp_path / "share")
    assert sorted(s.folder for s in result.sessions) == sorted(sim.sessions)
    rejected = {r.path: r.reason for r in result.rejected}
    assert set(rejected) == set(sim.malformed)
    for path, expected in sim.malformed.items():
        assert expected in rejected[path], (path, rejected[path])


def test_files_get_modalities_and_setup_from_consolidation(tmp_path):
    simulate_share(tmp_path / "share", malformed=False)
    session = scan_share(tmp_path / "share").sessions[0]
    scan = session.scans[0]
    assert scan.setup is not None
    modalities = {f.name: f.modality for f in scan.files}
    assert modalities == {
        "imaging_00001.tif": "imaging",
        "behavior_cam0.mp4": "video",
        "mocap_take.csv": "mocap",
        "mocap_take.tak": "mocap",
        "metadata.json": "aux",
    }
    assert ".origin.json" not in modalities


def test_plain_csv_is_aux_and_motive_csv_is_mocap(tmp_path):
    (tmp_path / "a.csv").write_text("time,value\n0,1\n")
    (tmp_path / "b.csv").write_text("Format Version,1.23,Take Name,x\n")
    assert modality_of(tmp_path / "a.csv") == "aux"
    assert modality_of(tmp_path / "b.csv") == "mocap"


def test_duplicate_session_id_and_bad_folders_do_not_stop_the_others(tmp_path):
    share = tmp_path / "share"
    good = share / "alice" / "AB_M1_2026-01-05_sessAAAA1111" / "scanAAAA1111"
    dup = share / "bob" / "BC_M2_2026-01-06_sessAAAA1111" / "scanBBBB2222"
    other = share / "bob" / "BC_M2_2026-01-06_sessCCCC3333" / "scanCCCC3333"
    for folder in (good, dup, other):
        folder.mkdir(parents=True)
        (folder / "x.json").write_text(json.dumps({}))
    (share / "bob" / "BC_M2_2026-01-06_sessCCCC3333" / "notes").mkdir()
    (share / "Bad User").mkdir()
    result = scan_share(share)
    assert [s.session_id for s in result.sessions] == ["AAAA1111", "CCCC3333"]
    reasons = {r.path: r.reason for r in result.rejected}
    assert "already used by alice/AB_M1_2026-01-05_sessAAAA1111" in reasons["bob/BC_M2_2026-01-06_sessAAAA1111"]
    assert "scan folder 'notes'" in reasons["bob/BC_M2_2026-01-06_sessCCCC3333/notes"]
    assert "username folder" in reasons["Bad User"]
