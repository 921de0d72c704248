"""Recovery of reserved DataJoint jobs (issue 13 item 7), on the embedded PostgreSQL (and MariaDB when present).

A reservation is held while its worker's connection lives (its pid/id AND when that connection started: PostgreSQL
reuses pids) and, for workers that heartbeat, while the heartbeat is fresher than the window.
"""

import json
import platform
import signal
import subprocess
import sys
import time

import psycopg2
import pytest
from labpipe.db.jobs import job_problems, recover_reserved_jobs
from labpipe.ingest.run import ingest_share
from labpipe.ingest.schema import tables
from labpipe.ingest.simulate import simulate_share


@pytest.fixture
def queued(lab_db, tmp_path):
    """Ingested sessions with pending MocapRecording jobs; one of them reserved by this process."""
    simulate_share(tmp_path / "share", sessions_per_user=1, malformed=False, users={"alice": "AB", "bob": "BC"})
    ingest_share(lab_db, tmp_path / "share")
    jobs = tables(lab_db).MocapRecording.jobs
    jobs.refresh()
    key = jobs.pending.keys(order_by="session_id", limit=1)[0]
    assert jobs.reserve(key)
    return lab_db, jobs, key


def _set(jobs, key, **values):
    """Rewrite columns of one job row (as a killed worker and a later connection would have left it)."""
    where = " AND ".join(f'"{k}" = %s' for k in key)
    assignments = ", ".join(f'"{k}" = %s' for k in values)
    jobs.connection.query(
        f"UPDATE {jobs.full_table_name} SET {assignments} WHERE {where}", args=(*values.values(), *key.values())
    )


def test_a_job_of_a_dead_worker_whose_pid_was_reused_is_recovered(queued):
    db, jobs, key = queued
    newcomer = psycopg2.connect(**db.target.psycopg2_kwargs())  # a backend that started after the reservation
    try:
        reused_pid = newcomer.get_backend_pid()
        started = db.connection.query("SELECT LOCALTIMESTAMP(3) - interval '1 hour'").fetchone()[0]
        _set(jobs, key, connection_id=reused_pid, reserved_time=started)  # reserved an hour ago by a dead backend
        problems = job_problems([tables(db).MocapRecording])
        assert [(p.status, p.key["session_id"]) for p in problems] == [("stuck", key["session_id"])]
        assert "started after the reservation" in problems[0].message
        cleared = recover_reserved_jobs([tables(db).MocapRecording])
        assert [c.key["session_id"] for c in cleared] == [key["session_id"]]
        assert not len(jobs.reserved) and len(jobs & key & "status = 'pending'") == 1
    finally:
        newcomer.close()


def test_a_live_workers_job_stays_reserved(queued):
    db, jobs, key = queued
    assert job_problems([tables(db).MocapRecording]) == []
    assert recover_reserved_jobs([tables(db).MocapRecording]) == []
    assert len(jobs.reserved) == 1


FROZEN_WORKER = """
import json, sys, time
from labpipe.db.connect import LabDatabase
from labpipe.db.jobs import worker_heartbeat
from labpipe.db.target import DatabaseTarget
from labpipe.ingest.schema import tables
db = LabDatabase(DatabaseTarget.from_url(sys.argv[1]), sys.argv[2], prefix=sys.argv[3])
jobs = tables(db).MocapRecording.jobs
with worker_heartbeat(db, every_s=0.2):
    assert jobs.reserve(json.loads(sys.argv[4]))
    print("reserved", flush=True)
    time.sleep(600)
"""


def test_a_worker_silent_past_the_heartbeat_window_is_recovered_and_a_beating_one_is_not(queued, tmp_path):
    """A worker process that freezes (SIGSTOP) keeps its connection open but stops beating."""
    db, jobs, key = queued
    other = jobs.pending.keys(order_by="session_id", limit=1)[0]
    argv = [sys.executable, "-c", FROZEN_WORKER, db.target.url, str(tmp_path / "blobs"), db.prefix, json.dumps(other)]
    worker = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "reserved"
        populated = [tables(db).MocapRecording]
        time.sleep(1)
        assert recover_reserved_jobs(populated, heartbeat_window_s=2) == []  # beating: held (and ours: no beats)
        worker.send_signal(signal.SIGSTOP)
        time.sleep(3)
        cleared = recover_reserved_jobs(populated, heartbeat_window_s=2)
        assert [c.key["session_id"] for c in cleared] == [other["session_id"]]
        assert "no heartbeat" in cleared[0].message and cleared[0].host == platform.node()
        assert cleared[0].pid == worker.pid
        assert len(jobs.reserved) == 1  # this process's reservation: live connection, no heartbeat rule applies
    finally:
        worker.kill()
        worker.wait()


def test_a_dead_connections_job_is_recovered_on_every_backend(any_db, tmp_path):
    simulate_share(tmp_path / "share", sessions_per_user=1, malformed=False, users={"alice": "AB"})
    ingest_share(any_db, tmp_path / "share")
    table = tables(any_db).MocapRecording
    table.jobs.refresh()
    key = table.jobs.pending.keys(limit=1)[0]
    if any_db.target.backend == "postgresql":
        worker = psycopg2.connect(**any_db.target.psycopg2_kwargs())
        gone = worker.get_backend_pid()
    else:
        import pymysql

        worker = pymysql.connect(**any_db.target.pymysql_kwargs())
        gone = worker.thread_id()
    assert table.jobs.reserve(key)
    quote = '"' if any_db.target.backend == "postgresql" else "`"
    table.connection.query(
        f"UPDATE {table.jobs.full_table_name} SET {quote}connection_id{quote} = %s", args=(gone,)
    )  # as if that worker had reserved it
    worker.close()
    time.sleep(0.5)  # the server notices the closed connection
    (problem,) = job_problems([table])
    assert problem.status == "stuck" and f"connection {gone} is gone" in problem.message
    assert [c.key for c in recover_reserved_jobs([table])] == [key]
    assert len(table.jobs & key & "status = 'pending'") == 1
