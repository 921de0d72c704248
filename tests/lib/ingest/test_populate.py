"""Worker populations on a real database, with real worker processes (the mocap population: the populate
mechanism every population shares; the calcium ones are tested in tests/lib/calcium and tests/flows/test_imaging.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from labpipe.db.jobs import clear_jobs, job_problems
from labpipe.ingest.populate import population_tables, run_population
from labpipe.ingest.run import ingest_share
from labpipe.ingest.schema import tables
from labpipe.ingest.simulate import simulate_share, write_motive_csv

from tests.conftest import MARIADB_STORE_BUG, server_target


def _worker_env(db, home):
    env = dict(os.environ)
    env.update(
        LABPIPE_HOME=str(home),
        LABPIPE_DATABASE_URL=db.target.url,
        LABPIPE_SCHEMA_PREFIX=db.prefix,
        PREFECT_API_URL="http://127.0.0.1:9/api",  # no server: the CLI falls back to settings
    )
    return env


def _worker(db, home, share, *args):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "labpipe.cli",
            "ingest",
            "populate",
            "mocap",
            "--share",
            str(share),
            *args,
        ],
        env=_worker_env(db, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def ingested(lab_db, tmp_path, labpipe_home):
    share = tmp_path / "share"
    sim = simulate_share(share, sessions_per_user=4, malformed=False, users={"alice": "AB", "bob": "BC"})
    ingest_share(lab_db, share)
    # the worker processes find the blob store under their LABPIPE_HOME, as deployed workers do
    lab_db.instance.config.stores["blobs"]["location"] = str(labpipe_home / "data" / "blobs")
    (labpipe_home / "data" / "blobs").mkdir(parents=True, exist_ok=True)
    return lab_db, share, sim


def test_populations_compute_every_task(ingested):
    db, share, sim = ingested
    result = run_population(db, "mocap", share)
    t = tables(db)
    assert result.errors == [] and result.remaining == {"MocapRecording": 0}
    assert result.computed == {"MocapRecording": len(t.MocapTask())} and len(t.MocapTask()) == len(sim.stacks)
    trajectories = (t.MocapRecording & t.MocapTask).to_arrays("trajectories")[0]
    assert np.asarray(trajectories.load() if hasattr(trajectories, "load") else trajectories).shape == (120, 3, 3)


def test_a_session_restriction_computes_that_session_only(ingested):
    db, share, _ = ingested
    t = tables(db)
    session = t.MocapTask.keys(order_by="session_id", limit=1)[0]["session_id"]
    mine = len(t.MocapTask & {"session_id": session})
    result = run_population(db, "mocap", share, session=session)
    assert result.computed["MocapRecording"] == mine and result.remaining["MocapRecording"] == 0
    assert len(t.MocapRecording()) == mine < len(t.MocapTask())


def test_two_concurrent_workers_never_compute_one_key_twice(ingested, labpipe_home):
    db, share, _ = ingested
    workers = [_worker(db, labpipe_home, share) for _ in range(2)]
    results = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [err[-2000:] for _, err in results]
    outputs = [json.loads(out) for out, _ in results]
    t = tables(db)
    computed = [o["computed"]["MocapRecording"] for o in outputs]
    assert sum(computed) == len(t.MocapTask()) == len(t.MocapRecording())  # each key exactly once
    assert all(o["errors"] == [] for o in outputs)


def test_a_killed_worker_leaves_a_stuck_job_that_is_listed_cleared_and_redone(ingested, labpipe_home):
    db, share, _ = ingested
    t = tables(db)
    session = t.MocapTask.keys(order_by="session_id", limit=1)[0]["session_id"]
    for key in (t.MocapTask & {"session_id": session}).keys(order_by="file_name"):  # all slow: a few seconds each
        write_motive_csv(share / (t.Scan & key).fetch1("folder") / key["file_name"], np.random.default_rng(0), 300_000)
    worker = _worker(db, labpipe_home, share, "--max-calls", "1", "--session", session)
    deadline = time.monotonic() + 300  # the worker process imports DataJoint and numpy first: slow on a busy host
    while (
        time.monotonic() < deadline and worker.poll() is None and not len(t.MocapRecording.jobs & "status='reserved'")
    ):
        time.sleep(0.05)
    assert worker.poll() is None, f"the worker ended (code {worker.returncode}) before it could be killed mid-job"
    assert len(t.MocapRecording.jobs & "status='reserved'") == 1, "the worker reserved no job within 300 s"
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert len(t.MocapRecording.jobs & "status='reserved'") == 1
    time.sleep(0.5)  # the server notices the closed connection
    problems = job_problems(population_tables(db, "mocap"))
    assert [(p.table, p.status) for p in problems] == [("MocapRecording", "stuck")]
    listed = subprocess.run(
        [sys.executable, "-m", "labpipe.cli", "ingest", "jobs", "--json"],
        env=_worker_env(db, labpipe_home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(listed.stdout)[0]["status"] == "stuck"
    assert clear_jobs(population_tables(db, "mocap")) == 1
    result = run_population(db, "mocap", share)
    assert result.errors == [] and len(t.MocapRecording()) == len(t.MocapTask())


def test_a_failing_key_is_recorded_and_the_rest_computed(ingested):
    db, share, _ = ingested
    t = tables(db)
    key = t.MocapTask.keys(order_by="session_id", limit=1)[0]
    (share / (t.Scan & key).fetch1("folder") / key["file_name"]).write_bytes(b"truncated")
    result = run_population(db, "mocap", share)
    assert len(result.errors) == 1 and "not a Motive .csv export" in result.errors[0]["error"]
    assert len(t.MocapRecording()) == len(t.MocapTask()) - 1
    problems = job_problems(population_tables(db, "mocap"))
    assert [p.status for p in problems] == ["error"]


def test_populations_run_on_every_backend(any_db, tmp_path):
    share = tmp_path / "share"
    simulate_share(share, sessions_per_user=1, malformed=False, users={"alice": "AB"})
    ingest_share(any_db, share)
    result = run_population(any_db, "mocap", share)
    assert result.errors == [] and result.computed == {"MocapRecording": 1}
    trajectories = tables(any_db).MocapRecording.fetch1("trajectories")
    assert np.asarray(trajectories.load()).shape == (120, 3, 3)


@pytest.mark.xfail(strict=True, raises=TypeError, reason=MARIADB_STORE_BUG)
def test_blob_store_attributes_on_mariadb_hit_the_datajoint_bug(tmp_path):
    """Kept so that we notice when a DataJoint release fixes it (this test then fails: XPASS)."""
    from labpipe.db.connect import LabDatabase, datajoint_module

    dj = datajoint_module()
    db = LabDatabase(server_target("mariadb"), tmp_path / "blobs", prefix=f"tmaria{os.getpid()}")
    try:
        schema = db.schema("bug")

        @schema
        class Holder(dj.Manual):
            definition = """
            k : int32
            ---
            v : <blob@blobs>
            """

        Holder.insert1({"k": 1, "v": np.arange(3)})
    finally:
        db.drop_all()
