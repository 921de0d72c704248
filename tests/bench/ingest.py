"""Ingest throughput on 10,000 simulated session folders, and Prefect's overhead per task.

Run: .venv/bin/python tests/bench/ingest.py [--sessions N]
Prints progress, then as its last line one JSON object with folders_per_s and prefect_overhead_ms_per_task.

- Throughput: parse + insert of N session folders (one scan and one metadata file each) into a fresh schema on
  the embedded PostgreSQL; the baseline beside it is the parse alone (walking and validating the folders).
- Prefect overhead: the same small function run M times as Prefect tasks inside a flow (on a temporary
  server) against M direct calls; (flow time - direct time) / M.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import tempfile
import time
from pathlib import Path


def _simulate(root: Path, sessions: int) -> None:
    from labpipe.ingest.simulate import simulate_share

    users = {f"user{i:02d}": "AB" for i in range(10)}
    per_user = sessions // len(users)
    # one session a day per user, ending yesterday: the parser rightly refuses dates in the future
    start = dt.date.today() - dt.timedelta(days=per_user + 1)
    simulate_share(root, sessions_per_user=per_user, users=users, light=True, malformed=False, seed=1, start=start)


def throughput(sessions: int, work: Path) -> dict:
    from labpipe.db.connect import LabDatabase
    from labpipe.db.embedded import EmbeddedPostgres
    from labpipe.ingest.run import ingest_share
    from labpipe.ingest.share import scan_share

    share = work / "share"
    t0 = time.perf_counter()
    _simulate(share, sessions)
    print(f"simulated {sessions} session folders in {time.perf_counter() - t0:.1f} s", flush=True)
    server = EmbeddedPostgres(work / "pg")
    db = LabDatabase(server.start(), work / "blobs", prefix="bench")
    try:
        t0 = time.perf_counter()
        parsed = scan_share(share)
        parse_s = time.perf_counter() - t0
        assert len(parsed.sessions) == sessions, len(parsed.sessions)
        from labpipe.ingest.schema import tables

        tables(db)  # declaring the schema is not ingest work
        t0 = time.perf_counter()
        report = ingest_share(db, share)
        ingest_s = time.perf_counter() - t0
        assert report.inserted == sessions and report.status == "succeeded"
        t0 = time.perf_counter()
        again = ingest_share(db, share)
        rerun_s = time.perf_counter() - t0
        assert again.inserted == 0 and again.skipped == sessions
    finally:
        db.drop_all()
        server.stop()
    return {
        "sessions": sessions,
        "parse_only_s": round(parse_s, 2),
        "parse_insert_s": round(ingest_s, 2),
        "folders_per_s": round(sessions / ingest_s, 1),
        "parse_only_folders_per_s": round(sessions / parse_s, 1),
        "rerun_nothing_new_s": round(rerun_s, 2),
    }


def prefect_overhead(tasks: int) -> dict:
    from prefect import flow, task
    from prefect.testing.utilities import prefect_test_harness

    def work(i: int) -> int:
        return sum(range(1000)) + i

    @task(name="bench-task")
    def as_task(i: int) -> int:
        return work(i)

    @flow(name="bench-flow")
    def many() -> int:
        return sum(as_task(i) for i in range(tasks))

    with prefect_test_harness(server_startup_timeout=120):
        many()  # warm-up: flow and task registration
        t0 = time.perf_counter()
        many()
        flow_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(tasks):
        work(i)
    direct_s = time.perf_counter() - t0
    return {
        "tasks": tasks,
        "flow_s": round(flow_s, 2),
        "direct_s": round(direct_s, 4),
        "prefect_overhead_ms_per_task": round(1000 * (flow_s - direct_s) / tasks, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="labpipe-bench-ingest-", dir="/tmp"))
    try:
        result = throughput(args.sessions, work)
        print(f"ingest: {result}", flush=True)
        overhead = prefect_overhead(args.tasks)
        print(f"prefect: {overhead}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({**result, **overhead}))


if __name__ == "__main__":
    main()
