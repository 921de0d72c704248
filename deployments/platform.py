"""``labpipe up / down / status``: the Prefect side of labpipe on one host.

``up`` starts (or reuses) the embedded database and a Prefect server, creates
the work pools ``cpu``, ``gpu`` and ``backup``, the global concurrency limit
``gpu`` (one slot per GPU, at least 1), registers every block type in
labpipe.blocks with ``default`` documents, deploys deployments/prefect.yaml and
starts one process worker per pool. Everything it starts is recorded under
``$LABPIPE_HOME/run`` so ``down`` stops exactly that.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pkgutil
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import httpx
from labpipe.config import Settings
from labpipe.db.embedded import EmbeddedPostgres
from labpipe.deployments import PREFECT_FILE, PROJECT_ROOT
from labpipe.deployments.pickers import refresh_pickers
from labpipe.deployments.processes import ManagedProcess
from labpipe.errors import ConfigError, ToolError
from labpipe.files import atomic_path
from labpipe.layout import Layout

POOLS = {
    "cpu": "CPU work on the main server: ingest, populations, radio conversion/calibration/imaging, VM flows.",
    "gpu": "GPU work: segmentation, training, pose estimation. On a host without a GPU it runs on the CPU.",
    "backup": "The backup host: database dumps, rsync pulls, borg, rclone archive, retention.",
}


def count_gpus() -> int:
    """GPUs visible through nvidia-smi (0 when there is none or no driver)."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def bin_path(tool: str) -> str:
    """A console script of this virtualenv (prefect, labpipe), falling back to PATH."""
    candidate = Path(sys.executable).parent / tool
    return str(candidate) if candidate.exists() else (shutil.which(tool) or tool)


# how often a worker asks for work: a run created by a trigger or the segmentation service starts within this
# (Prefect's default is 10 s); infra/labpipe.env.example sets the same for a lab's workers
WORKER_QUERY_S = "2"


def platform_env(settings: Settings) -> dict[str, str]:
    """Environment of every process ``up`` starts (server, workers, and so every flow run)."""
    env = dict(os.environ)
    env.update(
        LABPIPE_HOME=str(settings.home),
        LABPIPE_PROJECT_ROOT=str(PROJECT_ROOT),
        PREFECT_API_URL=settings.api_url,
        PREFECT_HOME=str(settings.home / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_API_HOST=settings.prefect_host,
        PREFECT_SERVER_API_PORT=str(settings.prefect_port),
        PREFECT_UI_API_URL=settings.api_url,
        MPLBACKEND="Agg",
        MPLCONFIGDIR=str(settings.home / "mpl"),
    )
    if settings.prefect_database_url:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = settings.prefect_database_url.get_secret_value()
    # on SQLite, Prefect sets its own busy timeout (PRAGMA busy_timeout = 60 s) on every connection
    return env


def use_platform_env(settings: Settings) -> None:
    """Point this process's Prefect client at the platform's server."""
    os.environ.update({k: v for k, v in platform_env(settings).items() if k.startswith(("PREFECT_", "LABPIPE_"))})


class ServerDown(ToolError):
    """No Prefect server answers at the platform's API address."""


class ServerBusy(ServerDown):
    """A server listens at the API address but did not answer in the time given (busy, or still starting)."""


# How long a request, /api/ready included, can take on a busy server on SQLite: a database connection from the
# pool (Prefect's pool timeout, 30 s) whose opening PRAGMAs wait for the write lock (Prefect's busy timeout, 60 s).
# Measured: with 12 concurrent writers, /api/ready took a median 30 s and at most 61 s, always answering 200. A
# probe that gives up sooner takes a busy server for a dead one.
BUSY_SERVER_S = 90.0


def api_tls_verify() -> str | bool:
    """What probes of the API verify its certificate against: the lab's CA when set (docs/lab.md), as Prefect does."""
    return os.environ.get("PREFECT_API_SSL_CERT_FILE") or True


def api_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"{api_url}/health", timeout=timeout, verify=api_tls_verify()).status_code == 200
    except httpx.HTTPError:
        return False


def listening(api_url: str) -> bool:
    """Whether something accepts connections at the API's host and port (a server, answering or not)."""
    url = httpx.URL(api_url)
    with socket.socket() as probe:
        probe.settimeout(2.0)
        return probe.connect_ex((url.host, url.port or (443 if url.scheme == "https" else 80))) == 0


def wait_for_api(api_url: str, within: float, *, starting: Callable[[], bool] = lambda: False) -> bool:
    """Whether the API answers ready (server up, its database reachable) within ``within`` seconds.

    A busy server (a cold first start, SQLite under several workers) gets the whole time, each request
    too (a request abandoned early would only queue another behind it). A refused connection ends the
    wait at once, unless ``starting()`` says a server process is on its way up.
    """
    deadline = time.monotonic() + within
    while True:
        refused = False
        try:
            remaining = max(0.5, deadline - time.monotonic())
            ready = httpx.get(f"{api_url}/ready", timeout=remaining, verify=api_tls_verify())
            if ready.status_code == 200:
                return True
        except httpx.ConnectError:
            refused = True
        except httpx.HTTPError:
            pass  # timed out or cut off: busy, ask again
        if time.monotonic() >= deadline or (refused and not starting()):
            return False
        time.sleep(0.5)


def _processes(settings: Settings) -> dict[str, ManagedProcess]:
    run, logs = settings.home / "run", settings.home / "logs"
    names = ["prefect-server"] + [f"worker-{pool}" for pool in POOLS]
    return {name: ManagedProcess(name, run, logs) for name in names}


def start_server(settings: Settings, timeout: float = 120.0) -> str:
    """Start a Prefect server unless one answers at the configured address; returns once it answers.

    A server already there (the lab's, or ours from an earlier ``up`` still starting or busy) is
    given time to answer before anything concludes that the port is taken by something else.
    """
    server = _processes(settings)["prefect-server"]
    if wait_for_api(settings.api_url, timeout if server.running() else BUSY_SERVER_S, starting=server.running):
        return settings.api_url
    if server.running():
        raise ServerDown(
            settings.api_url,
            f"labpipe's Prefect server (pid {server.pid()}) runs but has not answered within {timeout:.0f} s",
            f"see {server.log_file}; `labpipe down` stops it",
        )
    if settings.prefect_api_url:
        raise ServerDown(
            settings.prefect_api_url, "no Prefect server answers there", "start it or unset LABPIPE_PREFECT_API_URL"
        )
    with socket.socket() as probe:
        if probe.connect_ex((settings.prefect_host, settings.prefect_port)) == 0:
            raise ConfigError(
                f"{settings.prefect_host}:{settings.prefect_port}",
                "the port is taken by something that is not a Prefect server",
                "set LABPIPE_PREFECT_PORT",
            )
    server.start([bin_path("prefect"), "server", "start"], env=platform_env(settings))
    if wait_for_api(settings.api_url, timeout, starting=server.running):
        return settings.api_url
    tail = server.log_file.read_text()[-3000:] if server.log_file.exists() else ""
    state = "is still starting" if server.running() else "exited"
    raise ToolError(
        "prefect server",
        f"{state}, not answering at {settings.api_url} after {timeout:.0f} s:\n{tail}",
        f"see {server.log_file}",
    )


def ensure_pools(client, gpus: int) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists

    limits = {"cpu": max(2, os.cpu_count() or 1), "gpu": max(1, gpus), "backup": 2}
    for name, description in POOLS.items():
        try:
            client.create_work_pool(
                WorkPoolCreate(name=name, type="process", description=description, concurrency_limit=limits[name])
            )
        except ObjectAlreadyExists:
            client.update_work_pool(name, WorkPoolUpdate(description=description, concurrency_limit=limits[name]))


def lab_gpu_count(settings: Settings, host_gpus: int) -> int:
    """GPUs the `gpu` limit stands for: the lab's GPU hosts' (LABPIPE_LAB_GPUS), else this host's."""
    return settings.lab_gpus if settings.lab_gpus is not None else host_gpus


def ensure_gpu_limit(client, gpus: int) -> int:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    slots = max(1, gpus)
    client.upsert_global_concurrency_limit_by_name("gpu", slots)
    if client.read_global_concurrency_limit_by_name("gpu") is None:  # pragma: no cover - older servers
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu", limit=slots))
    return slots


def block_modules() -> list[str]:
    """labpipe.blocks and every module in it (one per lifecycle that has blocks)."""
    import labpipe.blocks as package

    return [package.__name__] + [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]


def block_classes() -> list[type]:
    """Every labpipe block class: the ``Block`` subclasses defined in labpipe.blocks and its modules."""
    from prefect.blocks.core import Block

    found = []
    for module_name in block_modules():
        module = importlib.import_module(module_name)
        found += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, type) and issubclass(obj, Block) and obj.__module__ == module_name
        ]
    return found


def register_blocks(settings: Settings) -> list[str]:
    """Register every labpipe block type and save ``default`` documents where none exist yet."""
    from labpipe.blocks import DaskCluster, LabDatabase, StorageLayout
    from labpipe.blocks.alerts import LabAlerts

    registered = []
    for cls in block_classes():
        cls.register_type_and_schema()
        registered.append(cls.get_block_type_slug())
    defaults = {
        StorageLayout: lambda: StorageLayout(**Layout.default(settings.home).model_dump()),
        LabDatabase: lambda: LabDatabase(url=settings.database_url, schema_prefix=settings.schema_prefix),
        DaskCluster: lambda: DaskCluster(address=settings.dask_address),
        LabAlerts: LabAlerts,  # empty (nobody told, and `up` says so): the form the operator fills in the UI
    }
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for cls, make in defaults.items():
            try:  # only a missing document gets the default: one that no longer loads is the user's to fix
                client.read_block_document_by_name("default", cls.get_block_type_slug(), include_secrets=False)
            except ObjectNotFound:
                make().save("default")
    return registered


def ensure_alert_automations():
    """The alert automations of the ``default`` LabAlerts block, and the one crashing runs whose heartbeats
    stopped (deployments/alerts.py); idempotent by name. Returns the alerts' report and that automation's name."""
    from labpipe.blocks.alerts import alert_settings
    from labpipe.deployments.alerts import ensure_alerts, ensure_silent_runs_crash
    from prefect.client.orchestration import get_client

    settings = alert_settings("default")
    installed = {e.value for e in entry_points(group="prefect.collections")}
    if settings.email_to and "labpipe.blocks.alerts" not in installed:
        raise ConfigError(
            "alert e-mail",
            "the Prefect server cannot send it: labpipe's prefect.collections entry point is not installed",
            "reinstall labpipe (pip install -e . or make install) and run `labpipe up` again",
        )
    from prefect.settings import get_current_settings

    heartbeat = get_current_settings().flows.heartbeat_frequency  # the workers' runs beat at this host's setting
    with get_client(sync_client=True) as client:
        report = ensure_alerts(client, settings)
        silent = ensure_silent_runs_crash(client, heartbeat)
    return report, silent


LIFECYCLE_OF_MODULE = {"radio_calibrate": "radio", "segment": "segmentation", "imaging": "ingest"}


def lifecycle_of(entrypoint: str) -> str:
    """The lifecycle a deployment belongs to, from its flow module (flows/radio_calibrate.py -> radio)."""
    stem = Path(entrypoint.split(":", 1)[0]).stem
    return LIFECYCLE_OF_MODULE.get(stem, stem)


def host_timezone() -> str:
    """This host's IANA time zone: $TZ, /etc/timezone, the /etc/localtime link, else UTC."""
    from zoneinfo import ZoneInfo

    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    with contextlib.suppress(OSError):
        candidates.append(os.readlink("/etc/localtime").partition("zoneinfo/")[2])
    for name in candidates:
        with contextlib.suppress(Exception):
            if name and ZoneInfo(name):
                return name
    return "UTC"


def deployment_specs(settings: Settings) -> list[dict]:
    """The deployments of prefect.yaml this lab deploys: its lifecycles only, cron schedules in its time zone."""
    import yaml

    specs = yaml.safe_load(PREFECT_FILE.read_text())["deployments"]
    known = sorted({lifecycle_of(d["entrypoint"]) for d in specs})
    chosen = settings.lifecycle_list
    if chosen is not None:
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            raise ConfigError("LABPIPE_LIFECYCLES", f"unknown lifecycles {unknown}", f"choose among {known}")
        specs = [d for d in specs if lifecycle_of(d["entrypoint"]) in chosen]
    zone = settings.timezone or host_timezone()
    for d in specs:
        for schedule in d.get("schedules") or []:
            if "cron" in schedule:
                schedule.setdefault("timezone", zone)
    return specs


def deployment_file(settings: Settings) -> Path:
    """prefect.yaml as this lab deploys it (``deployment_specs``), written under $LABPIPE_HOME/run."""
    import yaml

    config = yaml.safe_load(PREFECT_FILE.read_text())
    config["deployments"] = deployment_specs(settings)
    path = settings.home / "run" / "prefect.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as staged:
        staged.write_text(yaml.safe_dump(config, sort_keys=False, width=200))
    return path


def deploy_all(settings: Settings) -> None:
    """``prefect deploy --all`` of the lab's deployment file (``deployment_file``), from the project root."""
    result = subprocess.run(
        [bin_path("prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(deployment_file(settings))],
        cwd=PROJECT_ROOT,
        env=platform_env(settings),
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ToolError("prefect deploy", (result.stdout + result.stderr)[-4000:])


def set_schedules_active(client, active: bool, keep_paused: PausedState | None = None) -> int:
    """Turn every schedule on (or off); what an operator had paused (``keep_paused``) stays paused."""
    keep_paused = keep_paused or PausedState()
    changed = 0
    for deployment in client.read_deployments():
        name = _full_name(client, deployment)
        for schedule in deployment.schedules:
            want = active and (name, _schedule_text(schedule.schedule)) not in keep_paused.schedules
            if schedule.active != want:
                client.update_deployment_schedule(deployment.id, schedule.id, active=want)
                changed += 1
        if name in keep_paused.deployments and not deployment.paused:
            client.pause_deployment(deployment.id)
            changed += 1
    return changed


@dataclass
class PausedState:
    """What an operator paused: deployments (by flow/deployment name) and schedules (name, schedule text)."""

    deployments: set[str] = field(default_factory=set)
    schedules: set[tuple[str, str]] = field(default_factory=set)


def _full_name(client, deployment) -> str:
    return f"{client.read_flow(deployment.flow_id).name}/{deployment.name}"


def paused_state(client) -> PausedState:
    """Read before redeploying, so that ``up`` does not turn back on what an operator turned off."""
    state = PausedState()
    for deployment in client.read_deployments():
        name = _full_name(client, deployment)
        if deployment.paused:
            state.deployments.add(name)
        state.schedules |= {(name, _schedule_text(s.schedule)) for s in deployment.schedules if not s.active}
    return state


def start_workers(settings: Settings, gpus: int) -> dict[str, int]:
    pids = {}
    host = socket.gethostname()
    for pool in POOLS:
        env = platform_env(settings)
        env.setdefault("PREFECT_WORKER_QUERY_SECONDS", WORKER_QUERY_S)
        if pool == "gpu" and gpus == 0:
            env["LABPIPE_DEVICE"] = "cpu"  # honest: this host has no GPU, gpu flows run on the CPU
            env["CUDA_VISIBLE_DEVICES"] = ""
        cmd = [bin_path("prefect"), "worker", "start", "--pool", pool, "--type", "process", "--name", f"{pool}@{host}"]
        pids[pool] = _processes(settings)[f"worker-{pool}"].start(cmd, env=env, cwd=PROJECT_ROOT)
    return pids


def wait_for_workers(pools, timeout: float = 120.0) -> dict[str, bool]:
    """Wait until each pool has an ONLINE worker (they start in a few seconds, longer on a busy host)."""
    from prefect.client.orchestration import get_client

    online: dict[str, bool] = {}
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            online = {
                pool: any(w.status.value == "ONLINE" for w in client.read_workers_for_work_pool(pool)) for pool in pools
            }
            if all(online.values()) or time.monotonic() > deadline:
                return online
            time.sleep(1.0)


@dataclass
class UpReport:
    api_url: str
    ui_url: str
    database: str
    gpus: int
    gpu_slots: int
    blocks: list[str] = field(default_factory=list)
    workers: dict[str, int] = field(default_factory=dict)
    alert_channels: list[str] = field(default_factory=list)  # email, webhook; empty: nobody hears of failures
    alerts: list[str] = field(default_factory=list)  # the automations created or updated
    silent_runs: str | None = None  # the automation crashing runs whose heartbeats stopped (None: heartbeats off)


def up(settings: Settings, *, workers: bool = True, pause_schedules: bool = False) -> UpReport:
    from prefect.client.orchestration import get_client

    Layout.default(settings.home).ensure()
    database = "configured server"
    if settings.database_url is None:
        database = EmbeddedPostgres(settings.home / "pg").start().url
    api_url = start_server(settings)
    use_platform_env(settings)
    gpus = settings.gpus if settings.gpus is not None else count_gpus()
    lab_gpus = lab_gpu_count(settings, gpus)
    with get_client(sync_client=True) as client:
        ensure_pools(client, lab_gpus)
        slots = ensure_gpu_limit(client, lab_gpus)
    blocks = register_blocks(settings)
    alerts, silent = ensure_alert_automations()
    with get_client(sync_client=True) as client:
        paused = paused_state(client)
    deploy_all(settings)
    with get_client(sync_client=True) as client:
        set_schedules_active(client, not pause_schedules, keep_paused=paused)
        refresh_pickers(client)  # the run forms offer the saved block documents (deploy wrote plain schemas)
    pids = start_workers(settings, gpus) if workers else {}
    if pids:
        offline = [pool for pool, ok in wait_for_workers(pids).items() if not ok]
        if offline:
            logs = ", ".join(str(_processes(settings)[f"worker-{p}"].log_file) for p in offline)
            raise ToolError("prefect worker", f"pools {offline} have no online worker after 120 s", f"see {logs}")
    server = _processes(settings)["prefect-server"]
    if not wait_for_api(api_url, BUSY_SERVER_S, starting=server.running):  # `up` returns only while it answers
        raise ServerDown(api_url, "the Prefect server stopped answering during `labpipe up`", f"see {server.log_file}")
    return UpReport(
        api_url, api_url.removesuffix("/api"), database, gpus, slots, blocks, pids, alerts.channels,
        alerts.automations, silent,
    )  # fmt: skip


def down(settings: Settings, *, keep_database: bool = False) -> list[str]:
    """Stop workers, then the server, then the embedded database; returns what was stopped."""
    stopped = []
    processes = _processes(settings)
    for name in [n for n in processes if n.startswith("worker-")] + ["prefect-server"]:
        if processes[name].stop():
            stopped.append(name)
    if not keep_database and settings.database_url is None and EmbeddedPostgres(settings.home / "pg").stop():
        stopped.append("embedded-postgres")
    return stopped


def _schedule_text(schedule) -> str:
    if getattr(schedule, "interval", None) is not None:
        return f"every {int(schedule.interval.total_seconds())} s"
    if getattr(schedule, "cron", None):
        return f"cron {schedule.cron}"
    return str(schedule)


def status(settings: Settings, recent: int = 10, wait: float = BUSY_SERVER_S) -> dict:
    """Pools, workers, deployments and recent runs, as plain data.

    Raises ``ServerDown`` at once when nothing listens (and labpipe's server process is not starting),
    ``ServerBusy`` when a server listens but has not answered within ``wait`` seconds.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    server = _processes(settings)["prefect-server"]
    if not wait_for_api(settings.api_url, wait, starting=server.running):
        if listening(settings.api_url):
            raise ServerBusy(
                settings.api_url,
                f"a server listens there but has not answered within {wait:.0f} s (busy, or still starting)",
                f"wait longer (--wait); {server.log_file if server.running() else 'its log'} says why",
            )
        raise ServerDown(
            settings.api_url,
            "no Prefect server answers",
            "start the platform with `labpipe up`, or point LABPIPE_PREFECT_API_URL at the lab's server",
        )
    use_platform_env(settings)
    with get_client(sync_client=True) as client:
        pools = []
        for pool in client.read_work_pools():
            workers = client.read_workers_for_work_pool(pool.name)
            pools.append(
                {
                    "pool": pool.name,
                    "status": str(pool.status.value if pool.status else ""),
                    "concurrency": pool.concurrency_limit,
                    "workers": [
                        {"name": w.name, "status": str(w.status.value), "last_heartbeat": str(w.last_heartbeat_time)}
                        for w in workers
                    ],
                }
            )
        flow_names = {}
        deployments = []
        for d in sorted(client.read_deployments(), key=lambda d: (str(d.flow_id), d.name)):
            if d.flow_id not in flow_names:
                flow_names[d.flow_id] = client.read_flow(d.flow_id).name
            deployments.append(
                {
                    "name": d.name,
                    "full_name": f"{flow_names[d.flow_id]}/{d.name}",
                    "pool": d.work_pool_name,
                    "schedules": [_schedule_text(s.schedule) for s in d.schedules if s.active],
                    "paused": d.paused,
                }
            )
        started = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=[StateType.SCHEDULED])))
        runs = [
            {
                "name": r.name,
                "state": r.state.name if r.state else "",
                "start": str(r.start_time or r.expected_start_time),
                "deployment_id": str(r.deployment_id or ""),
            }
            for r in client.read_flow_runs(
                flow_run_filter=started, limit=recent, sort=FlowRunSort.EXPECTED_START_TIME_DESC
            )
        ]
        try:
            limit = client.read_global_concurrency_limit_by_name("gpu")
        except ObjectNotFound:  # a server `labpipe up` has not set up yet (a lab's, before its first up)
            limit = None
    return {
        "server": settings.api_url,
        "ui": settings.api_url.removesuffix("/api"),
        "gpu_limit": limit.limit if limit else None,
        "pools": pools,
        "deployments": deployments,
        "recent_runs": runs,
    }
