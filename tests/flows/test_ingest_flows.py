"""The ingest flows as real Prefect runs (test server), configured through saved blocks."""

import uuid

import pytest
from labpipe.blocks import LabDatabase, StorageLayout
from labpipe.db.dump import create_empty_database, restore_dump
from labpipe.db.target import DatabaseTarget
from labpipe.flows.ingest import dump_database, ingest, populate
from labpipe.ingest.schema import tables
from labpipe.ingest.simulate import simulate_share
from labpipe.layout import Layout
from prefect.client.orchestration import get_client


@pytest.fixture
def blocks(lab_db, tmp_path):
    """Saved blocks that point the flows at a temporary layout and the test database."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    roots = Layout.default(tmp_path).model_dump()
    roots["blobs"] = lab_db.blobs
    StorageLayout(**roots).save(name)
    LabDatabase(url=lab_db.target.url, schema_prefix=lab_db.prefix).save(name)
    layout = Layout(**roots).ensure()
    return name, layout


def _artifact(key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    return found[0].data if found else ""


def test_ingest_then_populate_then_dump_and_restore(blocks, lab_db):
    name, layout = blocks
    sim = simulate_share(layout.share, sessions_per_user=1)
    staged = layout.staging / "mini2p2" / "alice" / "AB_M7_2026-03-03_sessSTAGED01" / "scanSTAGED01"
    staged.mkdir(parents=True)
    (staged / "notes.json").write_text("{}")

    summary = ingest(min_age_s=0, layout_block=name, db_block=name)
    assert summary["status"] == "succeeded" and summary["inserted"] == len(sim.sessions) + 1
    t = tables(lab_db)
    assert (t.Scan & {"scan_id": "STAGED01"}).fetch1("setup") == "mini2p2"
    text = _artifact("ingest-summary")
    assert "succeeded" in text and "Rejected or failed (7)" in text and "sessSHORT" in text

    result = populate(population="mocap", layout_block=name, db_block=name)
    assert result["errors"] == 0 and result["remaining"] == {"MocapRecording": 0}
    assert "populate mocap" in _artifact("populate-mocap")

    dump = dump_database(layout_block=name, db_block=name)
    restored = create_empty_database(lab_db.target.with_dbname("postgres"), f"restore_{lab_db.prefix}")
    restore_dump(dump, restored)
    from labpipe.db.connect import LabDatabase as Lab

    copy = Lab(restored, lab_db.blobs, lab_db.prefix)
    assert len(tables(copy).Session()) == len(t.Session())
    assert len(tables(copy).MocapRecording()) == len(t.MocapRecording()) > 0


def test_ingest_run_fails_when_a_session_fails(blocks, lab_db):
    name, layout = blocks
    simulate_share(layout.share, sessions_per_user=1, malformed=False, light=True, users={"alice": "AB"})
    ingest(layout_block=name, db_block=name)
    session = next((layout.share / "alice").iterdir())
    moved = layout.share / "bob" / ("BC_M1_2026-01-01_sess" + session.name.rsplit("sess", 1)[1])
    moved.parent.mkdir()
    session.rename(moved)
    state = ingest(layout_block=name, db_block=name, return_state=True)
    assert state.is_failed()
    assert "already ingested from alice/" in _artifact("ingest-summary")


def test_dump_restores_on_mariadb_too(tmp_path):
    from labpipe.db.connect import LabDatabase as Lab
    from labpipe.db.connect import dump_lab_database
    from labpipe.ingest.run import ingest_share

    from tests.conftest import server_target

    target = server_target("mariadb")
    db = Lab(target, tmp_path / "blobs", prefix=f"tdump{uuid.uuid4().hex[:6]}")
    try:
        simulate_share(tmp_path / "share", sessions_per_user=1, light=True)
        ingest_share(db, tmp_path / "share")
        before = len(tables(db).RawFile())
        dump = dump_lab_database(db, tmp_path / "dumps")
        db.drop_all()
        restore_dump(dump, target)
        assert len(tables(Lab(target, tmp_path / "blobs", db.prefix)).RawFile()) == before > 0
    finally:
        db.drop_all()


def test_database_url_parsing():
    t = DatabaseTarget.from_url("postgresql://lab:s%40cret@db.example:6543/lab")
    assert (t.backend, t.host, t.port, t.user, t.password, t.dbname) == (
        "postgresql",
        "db.example",
        6543,
        "lab",
        "s@cret",
        "lab",
    )
    assert "s@cret" not in t.url
    s = DatabaseTarget.from_url("postgresql://postgres@/labpipe?host=/run/pg")
    assert (s.host, s.dbname) == ("/run/pg", "labpipe")
    m = DatabaseTarget.from_url("mariadb://root@127.0.0.1")
    assert (m.backend, m.port) == ("mysql", 3306)
    with pytest.raises(Exception, match="unknown database scheme 'oracle'"):
        DatabaseTarget.from_url("oracle://x@y")


def test_recover_jobs_releases_a_dead_workers_reservation_and_reports_it(blocks, lab_db):
    """The scheduled recover-jobs flow (issue 13 item 7): a job reserved by a connection that is gone is re-queued."""
    import psycopg2
    from labpipe.flows.ingest import recover_jobs

    name, layout = blocks
    simulate_share(layout.share, sessions_per_user=1, malformed=False, users={"alice": "AB"})
    ingest(layout_block=name, db_block=name)
    jobs = tables(lab_db).MocapRecording.jobs
    jobs.refresh()
    key = jobs.pending.keys(limit=1)[0]
    worker = psycopg2.connect(**lab_db.target.psycopg2_kwargs())  # a worker's connection: reserves, then dies
    gone = worker.get_backend_pid()
    assert jobs.reserve(key)
    jobs.connection.query(
        f"UPDATE {jobs.full_table_name} SET connection_id = %s WHERE session_id = %s", args=(gone, key["session_id"])
    )
    worker.close()
    result = recover_jobs(layout_block=name, db_block=name)
    assert result["recovered"] == 1 and result["jobs"][0]["key"]["session_id"] == key["session_id"]
    assert len(jobs & key & "status = 'pending'") == 1
    text = _artifact("recover-jobs")
    assert key["session_id"] in text and f"connection {gone} is gone" in text
    assert recover_jobs(layout_block=name, db_block=name)["recovered"] == 0


def test_ingest_appends_each_sessions_summary_to_its_users_rspace_entry_and_an_outage_fails_nothing(blocks, lab_db):
    """RSpace is a cloud service: the loopback stand-in (tests/lib/records/standins.py) implements the documented
    endpoints the real rspace-client calls."""
    from labpipe.blocks.imaging import RSpaceNotebook

    from tests.lib.records.standins import API_KEY, rspace_app, serve

    name, layout = blocks
    simulate_share(layout.share, sessions_per_user=1, malformed=False, users={"alice": "AB", "bob": "BC"})
    document = {"id": 7, "globalId": "SD7", "name": "log", "form": {"id": 3},
                "fields": [{"id": 70, "name": "Data", "content": "<p>before</p>"}]}  # fmt: skip
    with serve(rspace_app({7: document})) as url:
        RSpaceNotebook(url=url, api_key=API_KEY, entries={"alice": "SD7"}).save(name)
        first = ingest(min_age_s=0, layout_block=name, db_block=name, rspace_block=name)
    assert first["status"] == "succeeded"
    content = document["fields"][0]["content"]
    alice = [s["session_id"] for s in (tables(lab_db).Session & {"username": "alice"}).to_dicts()]
    assert content.startswith("<p>before</p>") and alice and all(s in content for s in alice)
    assert "SD7" in _artifact("ingest-summary")

    simulate_share(layout.share / "more", sessions_per_user=1, malformed=False, users={"alice": "AB"}, seed=9)
    RSpaceNotebook(url="http://127.0.0.1:9", api_key=API_KEY, entries={"alice": "SD7"}).save(name, overwrite=True)
    second = ingest(share=str(layout.share / "more"), min_age_s=0, layout_block=name, db_block=name, rspace_block=name)
    assert second["status"] == "succeeded" and second["inserted"] == 1  # RSpace down: the ingest still succeeds
    assert "RSpace" in _artifact("ingest-summary") and "could not append" in _artifact("ingest-summary")
