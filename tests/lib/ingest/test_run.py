"""Ingest into a real database, on every backend this machine runs."""

import datetime as dt

import pytest
from labpipe.ingest.run import ingest_share
from labpipe.ingest.schema import tables
from labpipe.ingest.simulate import simulate_share


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    root = tmp_path_factory.mktemp("share")
    return simulate_share(root, sessions_per_user=2, scans_per_session=2)


def test_accepts_rejects_and_records_the_run(any_db, share):
    report = ingest_share(any_db, share.root)
    t = tables(any_db)
    assert report.status == "succeeded"
    assert report.inserted == len(share.sessions) == len(t.Session())
    assert len(t.Scan()) == 2 * len(share.sessions)
    assert len(t.RawFile()) == 5 * len(t.Scan())
    assert len(t.ImagingTask()) == len(t.Scan()) == len(t.PoseEstimationTask()) == len(t.MocapTask())
    assert {r["path"] for r in report.rejected} == set(share.malformed)
    run = (t.IngestRun & {"run_id": report.run_id}).fetch1()
    assert run["status"] == "succeeded" and run["rejected"] == len(share.malformed)
    assert len(t.IngestRun.Failure & {"run_id": report.run_id}) == len(share.malformed)
    outcomes = (t.IngestRun.SessionOutcome & {"run_id": report.run_id}).to_arrays("outcome")
    assert list(outcomes).count("inserted") == len(share.sessions)
    session = (t.Session & {"session_id": report.sessions[0]["session_id"]}).fetch1()
    assert session["session_date"] == dt.date.fromisoformat(report.sessions[0]["session_date"])


def test_rerun_inserts_nothing_twice_and_picks_up_new_scans(any_db, share, tmp_path):
    first = ingest_share(any_db, share.root)
    again = ingest_share(any_db, share.root)
    assert (again.inserted, again.updated, again.skipped, again.files_inserted) == (0, 0, first.inserted, 0)
    t = tables(any_db)
    counts = (len(t.Session()), len(t.Scan()), len(t.RawFile()), len(t.ImagingTask()))
    new_scan = share.root / share.sessions[0] / "scanNEWSCAN1"
    new_scan.mkdir()
    (new_scan / "metadata.json").write_text("{}")
    try:
        third = ingest_share(any_db, share.root)
    finally:
        (new_scan / "metadata.json").unlink()
        new_scan.rmdir()
    assert third.updated == 1 and third.inserted == 0
    assert len(t.Scan()) == counts[1] + 1 and len(t.RawFile()) == counts[2] + 1
    assert len(t.ImagingTask()) == counts[3]


def test_session_id_reused_by_another_folder_fails_that_session_only(lab_db, tmp_path):
    share = tmp_path / "share"
    simulate_share(share, sessions_per_user=1, malformed=False, light=True, users={"alice": "AB"})
    ingest_share(lab_db, share)
    existing = next((share / "alice").iterdir())
    session_id = existing.name.rsplit("sess", 1)[1]
    moved = share / "bob" / f"BC_M9_2026-03-01_sess{session_id}"
    moved.parent.mkdir()
    existing.rename(moved)
    other = share / "bob" / "BC_M9_2026-03-02_sessZZZZ9999" / "scanZZZZ9999"
    other.mkdir(parents=True)
    (other / "metadata.json").write_text("{}")
    report = ingest_share(lab_db, share)
    assert report.status == "failed" and report.inserted == 1
    assert "already ingested from alice/" in report.failures[0]["reason"]
    t = tables(lab_db)
    assert (t.IngestRun & {"run_id": report.run_id}).fetch1("status") == "failed"


def test_a_session_whose_insert_fails_does_not_stop_its_batch(lab_db, tmp_path):
    share = tmp_path / "share"
    simulate_share(share, sessions_per_user=3, malformed=False, light=True, users={"alice": "AB"})
    bad = next((share / "alice").iterdir()) / f"scan{'A' * 8}"
    bad.mkdir()
    # a file name that is not UTF-8 (copied from an old Windows PC): the database refuses it
    with open(bad.as_posix().encode() + b"/notes-\xe9t\xe9.json", "w") as handle:
        handle.write("{}")
    report = ingest_share(lab_db, share)
    assert report.status == "failed"
    assert report.inserted == 2 and len(report.failures) == 1
    assert report.failures[0]["path"] == str(bad.parent.relative_to(share))
    assert len(tables(lab_db).Session()) == 2


def test_overlong_paths_are_rejected_by_name(lab_db, tmp_path):
    share = tmp_path / "share"
    scan = share / "alice" / "AB_M1_2026-01-05_sessAAAA1111" / "scanAAAA1111"
    deep = scan / ("d" * 130) / ("e" * 130)
    deep.mkdir(parents=True)
    (deep / "file.json").write_text("{}")
    (scan / "ok.json").write_text("{}")
    report = ingest_share(lab_db, share)
    assert report.status == "succeeded" and report.files_inserted == 1
    assert "longer than 255 characters" in report.rejected[0]["reason"]
