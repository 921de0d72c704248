"""The whole platform as users run it: `labpipe up`, a deployment run by a worker process, `labpipe down`.

Nothing here waits for luck: `up` returns once the server answers and every pool has an online worker, `status`
gives a busy server time to answer, the run is watched to its end, and `down` returns once every process it
stopped is gone. What can still move on its own (a worker's heartbeat) is polled with a deadline.
"""

import json
import os
import random
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from labpipe.db.connect import LabDatabase
from labpipe.db.embedded import EmbeddedPostgres
from labpipe.ingest.schema import tables
from labpipe.ingest.simulate import simulate_share

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _free_port() -> int:
    """A free port below the kernel's ephemeral range.

    `up` binds it only after starting the embedded PostgreSQL (a minute on a loaded host); a port from the
    ephemeral range (what binding port 0 gives) can meanwhile become the local end of any outgoing
    connection on the host, and the server would find it taken.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 12000), low), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail(f"no free port below the ephemeral range ({low})")


def _labpipe(env, *args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "labpipe.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _status(env) -> dict:
    result = _labpipe(env, "status", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def _until(condition, what: str, timeout: float = 120.0):
    """``condition()``'s first truthy result, asked once a second; fails naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (result := condition()) is None or result is False:
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(1.0)
    return result


def _all_pools_online(env) -> dict | None:
    status = _status(env)
    pools = {p["pool"]: p for p in status["pools"]}
    online = all([w["status"] for w in pools[pool]["workers"]] == ["ONLINE"] for pool in ("cpu", "gpu", "backup"))
    return status if online else None


def _trigger_latency(api_url: str, event: str, flows: list[str], timeout: float = 60.0) -> dict[str, float]:
    """Seconds from ``event`` (as the server recorded it) to the creation of a run of each flow's deployment."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        events = httpx.post(f"{api_url}/events/filter", json={"filter": {"event": {"name": [event]}}}).json()
        created = {}
        for name in flows:
            found = httpx.post(f"{api_url}/flow_runs/filter", json={"flows": {"name": {"any_": [name]}}, "limit": 50})
            runs = [r["created"] for r in found.json() if r.get("deployment_id")]
            if runs:
                created[name] = min(runs)
        if (events["events"] and len(created) == len(flows)) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert events["events"], f"no {event} event"
    occurred = min(datetime.fromisoformat(e["occurred"]) for e in events["events"])
    return {name: round((datetime.fromisoformat(at) - occurred).total_seconds(), 2) for name, at in created.items()}


def _layout_choices(api_url: str) -> list[str]:
    """What the run form of ingest/share offers for its storage layout block."""
    import httpx

    schema = httpx.get(f"{api_url}/deployments/name/ingest/share", timeout=60).json()["parameter_openapi_schema"]
    return next(m for m in schema["properties"]["layout_block"]["anyOf"] if m.get("type") == "string")["enum"]


def test_up_run_a_deployment_status_and_down(tmp_path):
    port = _free_port()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LABPIPE_"))}
    env.update(LABPIPE_HOME=str(home), LABPIPE_PREFECT_PORT=str(port), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    up = _labpipe(env, "up", "--pause-schedules", timeout=600)  # a cold first start on a busy host is slow
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"Prefect UI: http://127.0.0.1:{port}" in up.stdout
        assert "alerts: none - no e-mail or webhook" in up.stdout  # a lab without LabAlerts is told so
        status = _status(env)  # `up` returned: the server answers
        assert {p["pool"] for p in status["pools"]} >= {"cpu", "gpu", "backup"} and status["gpu_limit"] >= 1
        status = _until(lambda: _all_pools_online(env), "one ONLINE worker per pool")
        assert {"share", "suite2p", "mocap", "lab"} <= {d["name"] for d in status["deployments"]}
        assert all(not d["schedules"] for d in status["deployments"])  # --pause-schedules

        sim = simulate_share(home / "data" / "share", sessions_per_user=1)
        run_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        run = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "prefect"),
                "deployment",
                "run",
                "ingest/share",
                "--watch",
                "--watch-timeout",
                "300",
            ],
            env=run_env,
            capture_output=True,
            text=True,
            timeout=360,
        )
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr
        db = LabDatabase(EmbeddedPostgres(home / "pg").start(), home / "data" / "blobs", "labpipe")
        assert len(tables(db).Session()) == len(sim.sessions)
        recent = _status(env)["recent_runs"]
        assert any(r["state"] == "Completed" and r["name"].startswith("ingest") for r in recent)
        # the new sessions' event starts the populations by trigger (deployments/prefect.yaml), not by their poll
        populations = ["populate", "calcium-imaging", "behavior-trials"]  # mocap, suite2p, bpod
        latency = _trigger_latency(run_env["PREFECT_API_URL"], "labpipe.ingest.sessions.inserted", populations, 180)
        print(f"\ntrigger latency ingest.sessions.inserted -> population runs created (labpipe up): {latency}")
        # schedules are paused: every population run was made by its trigger. How soon is a figure, not a check:
        # usually 2-4 s, once 70 s for one of the three on a loaded 2-core host (SQLite behind the actions)
        assert set(latency) == set(populations) and min(latency.values()) > 0

        # the run forms' block pickers offer the saved documents; one saved later joins at the next `up`
        assert _layout_choices(run_env["PREFECT_API_URL"]) == ["default"]
        save = (
            "from pathlib import Path; from labpipe.blocks import StorageLayout; from labpipe.layout import Layout; "
            f"StorageLayout(**Layout.default(Path({str(home)!r})).model_dump()).save('nas', overwrite=True)"
        )
        saved = subprocess.run([sys.executable, "-c", save], env=run_env, capture_output=True, text=True, timeout=300)
        assert saved.returncode == 0, saved.stderr
        again = _labpipe(env, "up", "--pause-schedules", timeout=600)
        assert again.returncode == 0, again.stdout + again.stderr
        assert _layout_choices(run_env["PREFECT_API_URL"]) == ["default", "nas"]
    finally:
        down = _labpipe(env, "down")
    assert "worker-cpu" in down.stdout and "prefect-server" in down.stdout and "embedded-postgres" in down.stdout
    after = _labpipe(env, "status", "--json")  # `down` returned: nothing of the platform is left to answer
    assert after.returncode == 3 and "not running" in json.loads(after.stdout)["server"]
    assert not list((home / "run").glob("*.pid"))
