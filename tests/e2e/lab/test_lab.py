"""The simulated lab as an engineer brings it up: three namespaces, real services, auth and TLS, clean teardown.

One bring-up (``labpipe lab simulate up``, conftest.py) serves the folder; every check waits on a condition,
never a sleep, and the lab is torn down (by the command, then by the library as a safety net) and checked clean
after the folder's last test, even when a test or the bring-up fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.e2e.lab.support import LABPIPE, WHY_NOT

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]


def _in_namespace(lab, host: str) -> set[int]:
    return set(lab.net.pids().get(lab.net.namespace(host), []))


def test_every_host_runs_its_services_and_nothing_listens_on_a_wildcard(lab):
    services = lab.brought_up["services"]
    expected = {
        "main": {"postgres", "prefect-server", "dask-scheduler", "dask-worker-main", "worker-cpu", "sshd"}
        | {"diskwatch-main"},
        "gpu": {"dask-worker-gpu", "worker-gpu"},
        "backup": {"worker-backup", "diskwatch-backup"},
    }
    for host, names in expected.items():
        assert {n for n, s in services.items() if s["host"] == host} == names
        running = _in_namespace(lab, host)
        for name in names:
            assert services[name]["pid"] in running, f"{name} is not running in {host}'s namespace"
    for host in expected:
        listening = subprocess.run(
            ["ip", "netns", "exec", lab.net.namespace(host), "ss", "-Hltn"], capture_output=True, text=True
        ).stdout
        addresses = [line.split()[3].rsplit(":", 1)[0] for line in listening.splitlines()]
        assert addresses and not {"0.0.0.0", "*", "[::]"} & set(addresses), f"{host}: {addresses}"
        assert set(addresses) <= {"127.0.0.1", "[::1]", lab.net.address(host)}, f"{host}: {addresses}"


def test_the_prefect_server_runs_on_the_labs_postgresql_with_pg_trgm(lab):
    conn = lab._postgres_connect("prefect")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT extname FROM pg_extension")
            assert "pg_trgm" in {row[0] for row in cur.fetchall()}
            cur.execute("SELECT count(*) FROM work_pool WHERE name IN ('cpu', 'gpu', 'backup')")
            assert cur.fetchone()[0] == 3  # the pools the workers made live in this database
    finally:
        conn.close()


def test_the_lab_database_is_reached_from_other_hosts_over_tls_only(lab):
    import psycopg2

    url = lab.secret("lab-database-url").read_text().strip()

    def encrypted(sslmode: str) -> bool:
        conn = psycopg2.connect(url, sslmode=sslmode, connect_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                return cur.fetchone()[0]
        finally:
            conn.close()

    assert lab.net.call("backup", encrypted, "require") is True
    with pytest.raises(psycopg2.OperationalError, match="no encryption"):  # pg_hba: hostssl only off main
        lab.net.call("gpu", encrypted, "disable")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        lab.net.call("gpu", lambda: psycopg2.connect(url.replace("labpipe:", "labpipe:x"), sslmode="require"))


def test_the_prefect_api_wants_the_auth_string_over_tls(lab):
    for host in ("main", "gpu", "backup"):
        assert lab.api("POST", "/flow_runs/filter", json={}, auth=False, host=host).status_code == 401
    with_wrong = lab.net.call(
        "backup",
        lambda: (
            httpx.post(
                f"{lab.api_url}/flow_runs/filter",
                json={},
                auth=("labpipe", "guess"),
                verify=str(lab.certs / "ca.pem"),
            ).status_code
        ),
    )
    assert with_wrong == 401
    runs = lab.api("POST", "/flow_runs/filter", json={"limit": 5}, host="gpu")
    assert runs.status_code == 200 and isinstance(runs.json(), list)
    assert lab.api("GET", "/health", auth=False).status_code == 200  # probes stay open, as Prefect intends
    ui = lab.net.call("backup", lambda: httpx.get(lab.api_url.removesuffix("/api"), verify=str(lab.certs / "ca.pem")))
    assert ui.status_code == 200 and "<html" in ui.text.lower()
    settings = lab.net.call(
        "backup", lambda: httpx.get(f"{lab.api_url.removesuffix('/api')}/ui-settings", verify=str(lab.certs / "ca.pem"))
    ).json()
    assert settings["auth"] == "BASIC" and settings["api_url"] == lab.api_url  # the UI asks for the string
    with pytest.raises(httpx.HTTPError):  # no plain HTTP on the port
        lab.net.call("main", lambda: httpx.get(f"http://{lab.main}:4200/api/health", timeout=5))
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):  # the lab's CA, not the world's
        lab.net.call("main", lambda: httpx.get(f"{lab.api_url}/health", timeout=5))


DASK_PROBE = textwrap.dedent(
    """
    import json, os, socket, ssl, sys
    from distributed import Client
    from distributed.security import Security

    host, port = sys.argv[1], int(sys.argv[2])
    address, ca, stranger = os.environ["LABPIPE_DASK_ADDRESS"], sys.argv[3], sys.argv[4]
    seen = {}

    def refused(attempt):
        try:
            attempt()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        return None

    def no_certificate():
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = False
        with socket.create_connection((host, port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
            tls.sendall(b"hello")
            if not tls.recv(1):
                raise ConnectionError("closed by the scheduler")

    def connect(security, where=address):
        with Client(where, security=security, timeout=5):
            pass

    seen["no certificate"] = refused(no_certificate)
    seen["foreign CA"] = refused(lambda: connect(Security(
        tls_ca_file=ca, tls_client_cert=stranger + "/intruder.pem", tls_client_key=stranger + "/intruder-key.pem",
        require_encryption=True)))
    seen["plain tcp"] = refused(lambda: connect(Security(require_encryption=False), f"tcp://{host}:{port}"))

    def network_namespace():
        return os.stat("/proc/self/ns/net").st_ino

    with Client(address, timeout=30) as client:  # the lab's certificate, from the host's environment file
        future = client.submit(network_namespace, resources={"GPU": 1}, pure=False)
        seen["gpu task namespace"] = future.result(timeout=120)
        seen["gpu task worker"] = sorted(client.who_has(future)[future.key])
    print(json.dumps(seen))
    """
)


def test_dask_wants_the_lab_certificate_and_gpu_tasks_run_on_the_gpu_host(lab, tmp_path):
    from labpipe.lab.certs import make_certs

    make_certs(tmp_path / "stranger", {"intruder": [lab.main]}, lab="stranger")
    (tmp_path / "probe.py").write_text(DASK_PROBE)
    result = lab.run(
        "main",
        [sys.executable, str(tmp_path / "probe.py"), lab.main, "8786", str(lab.certs / "ca.pem")]
        + [str(tmp_path / "stranger")],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    for attempt in ("no certificate", "foreign CA", "plain tcp"):
        assert seen[attempt], f"a client with {attempt} connected to the scheduler"
    assert seen["gpu task namespace"] == os.stat(f"/run/netns/{lab.net.namespace('gpu')}").st_ino
    assert [w.split("//")[1].rsplit(":", 1)[0] for w in seen["gpu task worker"]] == [lab.net.address("gpu")]


SLURM_PROBE = """
import json, os, sys, time
from labpipe.compute import DaskSettings, SlurmSettings, dask_client

slurm = SlurmSettings(queue="lab", jobs=1, memory="1GiB", walltime="00:10:00", scheduler_host="127.0.0.1",
                      arrival_timeout_s=120, log_directory=sys.argv[1])
asked = time.monotonic()
with dask_client(DaskSettings(slurm=slurm)) as client:  # returns once the first worker joined
    arrival = round(time.monotonic() - asked, 2)
    job, namespace = client.submit(
        lambda: (os.environ.get("SLURM_JOB_ID"), os.stat("/proc/self/ns/net").st_ino), pure=False
    ).result()
    seen = {"scheduler": client.scheduler.address, "job": job, "namespace": namespace, "arrival_s": arrival,
            "workers": list(client.scheduler_info()["workers"])}
print(json.dumps(seen))
"""


def test_a_dask_step_on_main_gets_its_workers_as_slurm_jobs_over_the_labs_tls(lab, tmp_path):
    if not lab.status()["slurm"]:
        pytest.skip("the lab was brought up without its one-node SLURM (slurm-wlm and munge are not installed)")
    (tmp_path / "probe.py").write_text(SLURM_PROBE)
    result = lab.run("main", [sys.executable, str(tmp_path / "probe.py"), str(tmp_path)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"SLURM on main: the step's worker (job {seen['job']}) joined {seen['arrival_s']} s after it asked")
    assert seen["scheduler"].startswith("tls://127.0.0.1:"), seen  # the lab requires TLS: the step's own too
    assert seen["workers"] and all(w.startswith("tls://127.0.0.1:") for w in seen["workers"]), seen
    assert seen["job"] and seen["job"].isdigit(), seen
    assert seen["namespace"] == os.stat(f"/run/netns/{lab.net.namespace('main')}").st_ino
    assert seen["job"] in {j["id"] for j in lab.slurm.finished_jobs()}, "the job ended with the step"
    assert not lab.slurm.jobs()


def test_the_backup_host_pulls_from_main_over_key_only_ssh(lab, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from labpipe.lab.certs import write_private

    marker = lab.home("main") / "pull-me.txt"
    marker.write_text("from main\n")
    dest = tmp_path / "pulled"
    dest.mkdir()
    config = lab.host_env("backup")["LABPIPE_SSH_CONFIG"]
    pulled = lab.run("backup", ["rsync", "-a", "-e", f"ssh -F {config}", "main:pull-me.txt", f"{dest}/"], timeout=60)
    assert pulled.returncode == 0, pulled.stderr
    assert (dest / "pull-me.txt").read_text() == "from main\n"

    shell = lab.run("backup", ["ssh", "-F", config, "main", "cat /etc/hostname"], timeout=60)
    assert shell.returncode != 0 and not shell.stdout  # the key runs rrsync -ro, nothing else
    writing = lab.run("backup", ["rsync", "-a", "-e", f"ssh -F {config}", str(dest / "pull-me.txt"), "main:x"])
    assert writing.returncode != 0 and not (lab.home("main") / "x").exists()  # read-only
    # another key (not in authorized_keys): refused, and no password is asked for (BatchMode)
    stranger = tmp_path / "stranger"
    write_private(
        stranger,
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
        ),
    )
    other = tmp_path / "ssh_config"
    other.write_text(Path(config).read_text().replace(str(Path(config).parent / "id_ed25519"), str(stranger)))
    anonymous = lab.run("backup", ["ssh", "-F", str(other), "main", "true"], timeout=60)
    assert anonymous.returncode == 255 and "Permission denied" in anonymous.stderr


def test_the_disk_watch_gauges_are_scraped_over_the_lab_network(lab):
    for host in ("main", "backup"):  # from the gpu host, as the lab's Prometheus would
        url = f"http://{lab.net.address(host)}:9108/metrics"
        metrics = lab.net.call("gpu", lambda u=url: httpx.get(u, timeout=10))
        assert metrics.status_code == 200 and "labpipe_" in metrics.text, host


def test_labpipe_status_works_on_a_lab_host_with_its_env_files(lab):
    """The command line reads the secret files and trusts the lab's CA (it failed on both before)."""
    result = lab.run("backup", [LABPIPE, "status", "--json"], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["server"] == lab.api_url
    online = {p["pool"]: [w["name"] for w in p["workers"] if w["status"] == "ONLINE"] for p in data["pools"]}
    assert online == {"cpu": ["cpu@main"], "gpu": ["gpu@gpu"], "backup": ["backup@backup"]}


MEASURE_TRIGGER = textwrap.dedent(
    """
    import json, time
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.events import emit_event
    from prefect.events.worker import EventsWorker

    def populate_runs():
        with get_client(sync_client=True) as client:
            flows = FlowFilter(name=FlowFilterName(any_=["populate", "calcium-imaging", "behavior-trials"]))
            return [r for r in client.read_flow_runs(flow_filter=flows) if r.deployment_id]

    before = {r.id for r in populate_runs()}
    start = time.monotonic()
    emit_event(
        event="labpipe.ingest.sessions.inserted",
        resource={"prefect.resource.id": "labpipe.ingest.share.lab", "prefect.resource.name": "ingest"},
        payload={"run_id": "lab-e2e", "inserted": 1, "tasks": {}},
    )
    EventsWorker.instance().wait_until_empty()
    seen = {}
    while len(seen) < 3 and time.monotonic() - start < 180:
        for r in populate_runs():
            if r.id not in before:
                seen.setdefault(r.parameters.get("population", "behavior"), round(time.monotonic() - start, 2))
        time.sleep(0.2)
    print(json.dumps(seen))
    """
)


def test_up_on_main_deploys_triggers_that_start_the_populations(lab, deployed):
    """`labpipe up` on the main host (TLS, auth, the lab's PostgreSQL): a new ingest starts the populations."""
    assert "alerts: 6 automations notify by email, webhook" in deployed
    assert "silent runs: crashed after 3 missed heartbeats" in deployed
    measured = lab.run("main", [sys.executable, "-c", MEASURE_TRIGGER], timeout=300)
    assert measured.returncode == 0, measured.stdout + measured.stderr
    latency = json.loads(measured.stdout.strip().splitlines()[-1])
    print(f"trigger latency in the simulated lab (event -> run created, seen by a polling client): {latency}")
    assert set(latency) == {"imaging", "behavior", "mocap"}  # how soon is a figure (docs/lab.md), not a check
