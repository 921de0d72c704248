"""Benchmark: 200 concurrent VM requests for 50 available VMs, against LabLink's original claim as baseline.

Run alone: ``flock /tmp/labpipe-bench.lock .venv/bin/python tests/bench/vms.py``.

The allocator runs as a real process (``labpipe vms serve``) on an embedded
PostgreSQL in a temporary home; 50 VMs are registered in its table (as their
clients would: the benchmark measures claims, not 50 client processes), then
200 users with their own tokens ask at once over HTTP, for ``--rounds`` rounds.
Expected every round: exactly 50 granted, 150 refused with a clear 409, no VM
granted twice, no 5xx, no connection-pool exhaustion (503).

The baseline, on the same database in the same run, is LabLink's original claim:
read an available VM, then mark it in use (two statements, no lock), through a
pool that raises when all its connections are busy (SQLAlchemy's default of 5 +
10 overflow), 200 threads at once. The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg2
import psycopg2.pool
from labpipe.db.embedded import EmbeddedPostgres
from labpipe.vms.models import GpuFacts, Registration, Role
from labpipe.vms.server import AllocatorProcess
from labpipe.vms.store import VmStore

VMS, REQUESTS = 50, 200


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def reset(store: VmStore) -> None:
    """Every VM available and unowned again, with a fresh heartbeat (between rounds)."""
    with store.pool.connection() as conn, conn.cursor() as cur:
        cur.execute(
            f"UPDATE \"{store.schema}\".vms SET state = 'available', owner = NULL, user_command = NULL, "
            "last_heartbeat = now(), state_reason = 'bench reset'"
        )


async def burst(url: str, tokens: list[str]) -> list[tuple[int, float, dict]]:
    """All requests at once (released together by one event); per request: status, seconds, body."""
    go = asyncio.Event()
    limits = httpx.Limits(max_connections=len(tokens), max_keepalive_connections=len(tokens))
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:

        async def one(i: int, token: str):
            await go.wait()
            started = time.perf_counter()
            response = await http.post(
                "/vms/request", json={"email": f"user{i}@lab.org"}, headers={"Authorization": f"Bearer {token}"}
            )
            return response.status_code, time.perf_counter() - started, response.json()

        tasks = [asyncio.create_task(one(i, t)) for i, t in enumerate(tokens)]
        await asyncio.sleep(0.2)  # every task waiting at the gate
        go.set()
        return await asyncio.gather(*tasks)


def allocator_round(url: str, tokens: list[str], store: VmStore) -> dict:
    started = time.perf_counter()
    results = asyncio.run(burst(url, tokens))
    wall = time.perf_counter() - started
    statuses = Counter(status for status, _, _ in results)
    granted = [body["vm"]["id"] for status, _, body in results if status == 200]
    refused_clearly = sum(1 for s, _, b in results if s == 409 and b.get("error") == "no_vm_available")
    rows = store.list(states=["in_use"])
    double = (len(granted) - len(set(granted))) + (len(rows) - len({vm.owner for vm in rows}))
    return {
        "granted": len(granted),
        "refused": refused_clearly,
        "double_booked": double,
        "errors_5xx": sum(n for s, n in statuses.items() if s >= 500),
        "pool_exhausted": statuses.get(503, 0),
        "in_use_rows": len(rows),
        "statuses": dict(statuses),
        "latencies": [seconds for _, seconds, _ in results],
        "wall": wall,
    }


def naive_claims(store: VmStore) -> dict:
    """LabLink's original claim: SELECT an available VM, then UPDATE it; a pool that raises when full."""
    pool = psycopg2.pool.ThreadedConnectionPool(1, 15, **store.target.psycopg2_kwargs())
    vms = f'"{store.schema}".vms'
    outcomes: list[tuple[str, int | None, float]] = []
    lock, gate = threading.Lock(), threading.Event()

    def claim(i: int) -> None:
        gate.wait()
        started = time.perf_counter()
        try:
            conn = pool.getconn()
        except psycopg2.pool.PoolError:
            with lock:
                outcomes.append(("pool_exhausted", None, time.perf_counter() - started))
            return
        try:
            with conn.cursor() as cur:
                cur.execute(f"SELECT id FROM {vms} WHERE state = 'available' ORDER BY id LIMIT 1")
                row = cur.fetchone()
                if row is None:
                    outcome, vm_id = "refused", None
                else:
                    update = f"UPDATE {vms} SET state = 'in_use', owner = %s WHERE id = %s"
                    cur.execute(update, (f"user{i}@lab.org", row[0]))
                    outcome, vm_id = "granted", row[0]
            conn.commit()
        finally:
            pool.putconn(conn)
        with lock:
            outcomes.append((outcome, vm_id, time.perf_counter() - started))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(REQUESTS)]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    gate.set()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    pool.closeall()
    kinds = Counter(kind for kind, _, _ in outcomes)
    granted = [vm_id for kind, vm_id, _ in outcomes if kind == "granted"]
    latencies = [seconds for _, _, seconds in outcomes]
    return {
        "baseline_granted": kinds["granted"],
        "baseline_refused": kinds["refused"],
        "baseline_double_booked": len(granted) - len(set(granted)),
        "baseline_pool_exhausted": kinds["pool_exhausted"],
        "baseline_rps": round(REQUESTS / wall, 1),
        "baseline_p50_ms": round(1000 * percentile(latencies, 0.5), 1),
        "baseline_p99_ms": round(1000 * percentile(latencies, 0.99), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lp-vms-bench-") as tmp:
        home = Path(tmp)
        target = EmbeddedPostgres(home / "pg").start()
        env = {
            "LABPIPE_DATABASE_URL": target.url,
            "LABPIPE_SCHEMA_PREFIX": "bench",
            "PREFECT_API_URL": "http://127.0.0.1:9/api",  # no Prefect here: inline launcher, no events
        }
        store = VmStore(target, "bench_vms", pool_size=5)
        store.ensure_schema()
        for vm in store.add_vms(VMS, provisioner="local", request_key="bench"):
            store.register(vm.id, Registration(address="127.0.0.1", gpu=GpuFacts(present=False, healthy=True)))
        tokens = [store.issue_token(Role.user, email=f"user{i}@lab.org") for i in range(REQUESTS)]
        allocator = AllocatorProcess(home, block="", env=env).start(timeout=180)
        try:
            rounds = []
            for number in range(args.rounds):
                reset(store)
                result = allocator_round(allocator.url, tokens, store)
                rounds.append(result)
                print(
                    f"round {number + 1}: granted {result['granted']}, refused {result['refused']}, "
                    f"double-booked {result['double_booked']}, 5xx {result['errors_5xx']}, "
                    f"statuses {result['statuses']}, {REQUESTS / result['wall']:.0f} req/s",
                    file=sys.stderr,
                )
        finally:
            allocator.stop()
        reset(store)
        baseline = naive_claims(store)
        print(f"baseline (read-then-write, raising pool): {baseline}", file=sys.stderr)
        store.close()
        EmbeddedPostgres(home / "pg").stop()

    latencies = [s for r in rounds for s in r["latencies"]]

    def off(key: str, expected: int) -> int:
        """The figure of the first round that missed ``expected`` (the worst decides), else ``expected``."""
        return next((r[key] for r in rounds if r[key] != expected), expected)

    figures = {
        "vms": VMS,
        "requests": REQUESTS,
        "rounds": len(rounds),
        "granted": off("granted", VMS),
        "refused": off("refused", REQUESTS - VMS),
        "double_booked": max(r["double_booked"] for r in rounds),
        "errors_5xx": max(r["errors_5xx"] for r in rounds),
        "pool_exhausted": max(r["pool_exhausted"] for r in rounds),
        "rps": round(statistics.median(REQUESTS / r["wall"] for r in rounds), 1),
        "p50_ms": round(1000 * percentile(latencies, 0.5), 1),
        "p99_ms": round(1000 * percentile(latencies, 0.99), 1),
        "cpu_count": os.cpu_count(),
        **baseline,
    }
    print(json.dumps(figures))
    ok = figures["granted"] == VMS and figures["refused"] == REQUESTS - VMS and not figures["double_booked"]
    return 0 if ok and not figures["errors_5xx"] else 1


if __name__ == "__main__":
    sys.exit(main())
