"""A simulated lab on one machine: three hosts as network namespaces, each running what the lab's host runs.

``main``: a private PostgreSQL cluster (Debian's server programs, ``pg_trgm``), the Prefect server behind
basic auth and TLS (uvicorn's own), the Dask scheduler (mutual TLS), a Dask worker, the ``cpu`` pool
worker, the disk watch exporter and an sshd (key only, forced ``rrsync -ro``) for the backup pull. ``gpu``: a
Dask worker with the resource ``GPU=1`` and the ``gpu`` pool worker. ``backup``: the ``backup`` pool worker and
the disk watch exporter.

The labpipe services are the units of ``infra/systemd``: their ExecStart, Environment and WorkingDirectory as
systemd would run them (with ``/opt/labpipe`` mapped onto this checkout, and as root: the real units run as
``labpipe``), so the e2e test proves the units themselves. PostgreSQL and sshd are Debian's programs. The lab
keeps everything in ``/run/labpipe-lab-<prefix>`` (certificates, 0600 secret files, ``etc/labpipe.env`` and
``hosts/<host>/host.env`` as a real host's ``/etc/labpipe`` holds them, logs, the database); ``down`` ends every
process in the namespaces, deletes the namespaces and that folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from labpipe.errors import ConfigError, ToolError
from labpipe.lab.certs import make_certs, write_private
from labpipe.lab.netns import LabNetwork
from labpipe.lab.slurm import LabSlurm
from labpipe.procs import pid_alive, wait_until

PREFECT_PORT = 4200
DASK_PORT = 8786
DASK_DASHBOARD = "127.0.0.1:8787"  # diagnostics on main's loopback only: ssh -L to look at it
POSTGRES_PORT = 5432
SLURM_PORTS = (6817, 6818)  # slurmctld, slurmd: SLURM's own ports, on main's loopback (up --slurm)
POSTGRES_USER = "postgres"  # Debian's account for the server programs (initdb refuses root)
AUTH_USER = "labpipe"
DISKWATCH_HOSTS = ("main", "backup")  # the hosts with data roots (labpipe-diskwatch.service)
DISKWATCH_PORT = 9108
HEARTBEAT_S = 30  # flow runs' heartbeat: a run silent for 3 beats is marked crashed (labpipe up's automation)
SECRET_FILES = {
    "prefect-auth": "PREFECT_API_AUTH_STRING",
    "prefect-database-url": "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "lab-database-url": "LABPIPE_DATABASE_URL",
}


def run_root() -> Path:
    """Where simulated labs keep their state (``LABPIPE_LAB_RUN``, default /run: root-only, not /tmp)."""
    return Path(os.environ.get("LABPIPE_LAB_RUN", "/run"))


def postgres_bindir() -> Path:
    """Debian's PostgreSQL server programs (the newest installed major version)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not found:
        raise ToolError(
            "PostgreSQL server programs", "not found in /usr/lib/postgresql/*/bin", "apt-get install postgresql"
        )
    return found[-1].parent


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        packages = {"sshd": "openssh-server", "rrsync": "rsync", "setpriv": "util-linux", "nsenter": "util-linux"}
        package = packages.get(name, name)
        raise ToolError(name, "is not installed", f"apt-get install {package}")
    return path


@dataclass(frozen=True)
class Service:
    name: str
    host: str
    argv: list[str] | None = None  # a program of Debian's (PostgreSQL, sshd), or None: the unit's ExecStart
    user: str | None = None  # run as this account (setpriv); None: as the caller (root)
    unit: str | None = None  # infra/systemd/<unit>
    instance: str = ""


def read_env_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines (systemd's EnvironmentFile subset: no quotes, ``#`` comments)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


CHECKOUT = Path(__file__).resolve().parents[2]  # lib/lab/simulate.py -> the checkout (infra/ beside lib/)
UNITS = CHECKOUT / "infra" / "systemd"
INSTALL_ROOT = "/opt/labpipe"  # where the units expect labpipe; the simulated lab maps it onto this checkout


def _on_this_checkout(word: str) -> str:
    venv_bin = f"{INSTALL_ROOT}/.venv/bin/"
    if word.startswith(venv_bin):
        name = word.removeprefix(venv_bin)
        return sys.executable if name == "python" else str(Path(sys.executable).parent / name)
    return word.replace(INSTALL_ROOT, str(CHECKOUT))


def _expand(word: str, env: dict[str, str]) -> list[str]:
    """systemd's expansion of one ExecStart word: ``$NAME`` alone splits on blanks, ``${NAME}`` stays one word."""
    whole = re.fullmatch(r"\$(\w+)", word)
    if whole:
        return env.get(whole.group(1), "").split()
    return [re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), word)]


def unit_command(unit: str, env: dict[str, str], instance: str = "", host: str = "") -> tuple[list[str], dict, Path]:
    """The command, extra environment and working folder of ``infra/systemd/<unit>`` as systemd would run it
    with ``env`` (its EnvironmentFiles), ``%i`` = ``instance`` and ``%H`` = ``host``, on this checkout."""
    path = UNITS / unit
    if not path.exists():
        raise ToolError(path, "the simulated lab runs the units of a labpipe checkout", "run it from a checkout")
    exec_start, extra, workdir = "", {}, CHECKOUT
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        value = value.replace("%i", instance).replace("%H", host)
        if key == "ExecStart":
            exec_start = value
        elif key == "Environment":
            name, _, setting = value.partition("=")
            extra[name] = _on_this_checkout(setting)
        elif key == "WorkingDirectory":
            workdir = Path(_on_this_checkout(value))
    words = [w for word in shlex.split(exec_start) for w in _expand(word, {**env, **extra})]
    return [_on_this_checkout(w) for w in words], extra, workdir


class SimulatedLab:
    """One simulated lab: its network, its folder and the services of each host."""

    def __init__(self, prefix: str = "labpipe", subnet: str = "10.231.0", root: Path | None = None) -> None:
        self.net = LabNetwork(prefix=prefix, subnet=subnet)
        self.root = (root or run_root()) / f"labpipe-lab-{prefix}"
        self.certs = self.root / "certs"
        self.secrets = self.root / "secrets"
        self.logs = self.root / "logs"
        self.pids = self.root / "run"
        self.pgdata = self.root / "pg" / "data"
        self.pgsocket = self.root / "pg" / "socket"
        self.ssh = self.root / "ssh"
        self._children: list[subprocess.Popen] = []
        self._slurm_asked = False

    @property
    def with_slurm(self) -> bool:
        """True when this lab runs (or is bringing up) its one-node SLURM."""
        return self._slurm_asked or (self.root / "slurm").exists()

    @property
    def slurm(self) -> LabSlurm:
        """The lab's one-node SLURM (``up(slurm=True)``): its daemons on main, on main's loopback."""
        # nsenter, not `ip netns exec`: that remounts /sys for the namespace, without /sys/fs/cgroup, and slurmd
        # will not start without it ("Unable to initialize cgroup plugin")
        enter = [_tool("nsenter"), f"--net=/run/netns/{self.net.namespace('main')}", "--"]
        return LabSlurm(self.root / "slurm", wrap=lambda argv: enter + argv, name=self.net.prefix)

    # --- addresses and per-host configuration -------------------------------------------------------------

    @property
    def main(self) -> str:
        return self.net.address("main")

    @property
    def api_url(self) -> str:
        return f"https://{self.main}:{PREFECT_PORT}/api"

    @property
    def dask_address(self) -> str:
        return f"tls://{self.main}:{DASK_PORT}"

    def home(self, host: str) -> Path:
        return self.root / "hosts" / host / "home"

    @property
    def shared_env_file(self) -> Path:
        return self.root / "etc" / "labpipe.env"

    def env_file(self, host: str) -> Path:
        return self.root / "hosts" / host / "host.env"

    def secret(self, name: str) -> Path:
        return self.secrets / name

    def shared_env(self) -> dict[str, str]:
        """/etc/labpipe/labpipe.env: the same on every host."""
        return {
            "PREFECT_API_URL": self.api_url,
            "LABPIPE_PREFECT_API_URL": self.api_url,
            "PREFECT_API_SSL_CERT_FILE": str(self.certs / "ca.pem"),
            "PREFECT_API_AUTH_STRING_FILE": str(self.secret("prefect-auth")),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "LABPIPE_DATABASE_URL_FILE": str(self.secret("lab-database-url")),
            "LABPIPE_DASK_ADDRESS": self.dask_address,
            "DASK_SCHEDULER_ADDRESS": self.dask_address,
            "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(self.certs / "ca.pem"),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_S),
            "PREFECT_WORKER_QUERY_SECONDS": "2",  # as infra/labpipe.env.example
            "MPLBACKEND": "Agg",
        }

    def host_env(self, host: str) -> dict[str, str]:
        """/etc/labpipe/host.env: what differs per host (its address, certificate, role)."""
        cert, key = self.certs / f"{host}.pem", self.certs / f"{host}-key.pem"
        env = {
            "LABPIPE_HOME": str(self.home(host)),  # /srv/labpipe on every real host; apart here, on one disk
            "PREFECT_HOME": str(self.home(host) / "prefect"),
            "LABPIPE_LAB_HOST": host,
            "LABPIPE_HOST_ADDRESS": self.net.address(host),
        }
        for role in ("SCHEDULER", "WORKER", "CLIENT"):
            env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] = str(cert)
            env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] = str(key)
        if host == "main":
            env.update(
                PREFECT_SERVER_API_HOST=self.main,
                PREFECT_SERVER_API_PORT=str(PREFECT_PORT),
                PREFECT_SERVER_API_AUTH_STRING_FILE=str(self.secret("prefect-auth")),
                PREFECT_SERVER_DATABASE_CONNECTION_URL_FILE=str(self.secret("prefect-database-url")),
                PREFECT_UI_API_URL=self.api_url,
                LABPIPE_TLS_CERT=str(cert),
                LABPIPE_TLS_KEY=str(key),
            )
        if host in ("main", "gpu"):  # what labpipe-dask-worker.service adds to its command line
            resources = " --resources GPU=1" if host == "gpu" else ""
            env["DASK_WORKER_ARGS"] = f"--nworkers 1 --nthreads 2 --name {host}{resources}"
        if host == "gpu":
            env["LABPIPE_GPUS"] = "1"
        if host == "main" and self.with_slurm:  # main is the SLURM cluster's submit host
            env.update(self.slurm.env())
        if host == "backup":
            env["LABPIPE_SSH_CONFIG"] = str(self.root / "hosts" / "backup" / "ssh" / "config")
        return env

    def process_env(self, host: str) -> dict[str, str]:
        """What a service on ``host`` starts with: its environment file and nothing of the caller's."""
        venv_bin = str(Path(sys.executable).parent)
        return {
            "PATH": f"{venv_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home(host)),
            "LANG": "C.UTF-8",
            **read_env_file(self.shared_env_file),
            **read_env_file(self.env_file(host)),  # as systemd reads them: the host's file last
        }

    def with_secrets(self, argv: list[str]) -> list[str]:
        return [sys.executable, "-m", "labpipe.lab.secretenv", *argv]

    def run(self, host: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """``argv`` on ``host``: in its namespace, with its environment and secrets."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        env = {**self.process_env(host), **kwargs.pop("env", {})}
        return subprocess.run(self.net.exec_argv(host, self.with_secrets(argv)), env=env, **kwargs)

    # --- services ---------------------------------------------------------------------------------------

    def services(self) -> list[Service]:
        """Debian's PostgreSQL and sshd, and labpipe's own systemd units (their ExecStart, run as written)."""
        main, bindir = self.main, postgres_bindir()
        return (
            [
                Service(
                    "postgres",
                    "main",
                    [str(bindir / "postgres"), "-D", str(self.pgdata)]
                    + [f"--listen_addresses=127.0.0.1,{main}", f"--port={POSTGRES_PORT}"]
                    + [f"--unix_socket_directories={self.pgsocket}", "--ssl=on"]
                    + [f"--ssl_cert_file={self.pgdata / 'server.crt'}", f"--ssl_key_file={self.pgdata / 'server.key'}"],
                    user=POSTGRES_USER,
                ),
                Service("sshd", "main", [_tool("sshd"), "-D", "-e", "-f", str(self.ssh / "sshd_config")]),
                Service("prefect-server", "main", unit="labpipe-prefect-server.service"),
                Service("dask-scheduler", "main", unit="labpipe-dask-scheduler.service"),
                Service("dask-worker-main", "main", unit="labpipe-dask-worker.service"),
                Service("dask-worker-gpu", "gpu", unit="labpipe-dask-worker.service"),
            ]
            + [
                Service(f"worker-{pool}", host, unit="labpipe-worker@.service", instance=pool)
                for pool, host in (("cpu", "main"), ("gpu", "gpu"), ("backup", "backup"))
            ]
            + [Service(f"diskwatch-{host}", host, unit="labpipe-diskwatch.service") for host in DISKWATCH_HOSTS]
        )

    def _service(self, name: str) -> Service:
        return next(s for s in self.services() if s.name == name)

    def command(self, service: Service) -> tuple[list[str], dict[str, str], Path]:
        """What ``service`` runs on its host: argv, environment, working folder."""
        env = self.process_env(service.host)
        if service.unit:
            argv, extra, workdir = unit_command(service.unit, env, service.instance, service.host)
            return argv, {**env, **extra}, workdir
        assert service.argv is not None
        if service.user:  # the database's own account: none of labpipe's environment or secrets
            argv = [_tool("setpriv"), f"--reuid={service.user}", f"--regid={service.user}", "--init-groups"]
            return argv + service.argv, {"PATH": env["PATH"], "LANG": "C.UTF-8"}, self.home(service.host)
        return service.argv, env, self.home(service.host)

    def start(self, service: Service) -> int:
        argv, env, workdir = self.command(service)
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{service.name}.log", "ab") as log:
            child = subprocess.Popen(
                self.net.exec_argv(service.host, argv),
                env=env,
                cwd=workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._children.append(child)
        (self.pids / f"{service.name}.pid").write_text(f"{child.pid}\n{service.host}\n")
        return child.pid

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.pids / f"{name}.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def _reap(self) -> None:
        for child in self._children:
            child.poll()

    def _wait(self, what: str, condition, timeout: float, service: str | None = None) -> None:
        def ready() -> bool:
            self._reap()
            if service and self.pid(service) is None:
                raise ToolError(service, f"exited while starting:\n{self.log_tail(service)}", f"see {self.logs}")
            try:
                return bool(condition())
            except (OSError, ValueError):
                return False
            except Exception as exc:  # noqa: BLE001 - httpx and psycopg2 errors: not ready yet
                if type(exc).__module__.split(".")[0] in {"httpx", "httpcore", "psycopg2", "ssl"}:
                    return False
                raise

        if not wait_until(ready, timeout, interval=0.3):
            tail = self.log_tail(service) if service else ""
            raise ToolError(what, f"not ready after {timeout:.0f} s\n{tail}", f"see the logs in {self.logs}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        log = self.logs / f"{name}.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    # --- probes (from inside a host's namespace) ---------------------------------------------------------

    def auth_string(self) -> str:
        return self.secret("prefect-auth").read_text().strip()

    def api(self, method: str, path: str, *, auth: bool = True, host: str = "main", **kwargs):
        """One request to the Prefect API from ``host`` (TLS verified against the lab's CA)."""
        import httpx

        def call():
            headers = {}
            if auth:
                import base64

                headers["Authorization"] = "Basic " + base64.b64encode(self.auth_string().encode()).decode()
            with httpx.Client(verify=str(self.certs / "ca.pem"), timeout=10) as client:
                return client.request(method, f"{self.api_url}{path}", headers=headers, **kwargs)

        return self.net.call(host, call)

    def _listening(self, host: str, address: str, port: int) -> bool:
        def probe() -> bool:
            with socket.create_connection((address, port), timeout=2):
                return True

        return self.net.call(host, probe)

    def dask_worker_count(self) -> int:
        import httpx

        def counts() -> int:
            return httpx.get(f"http://{DASK_DASHBOARD}/json/counts.json", timeout=5).json()["workers"]

        return self.net.call("main", counts)

    def pool_workers_online(self, pool: str) -> list[str]:
        reply = self.api("POST", f"/work_pools/{pool}/workers/filter", json={})
        if reply.status_code != 200:
            return []
        return [w["name"] for w in reply.json() if w.get("status") == "ONLINE"]

    def pool_worker_beat(self, pool: str, name: str, since) -> bool:
        """True once worker ``name`` of ``pool`` sent a heartbeat after ``since`` (a restarted worker keeps its
        name: its old record stays ONLINE for a while after the old process died)."""
        import datetime as dt

        reply = self.api("POST", f"/work_pools/{pool}/workers/filter", json={})
        if reply.status_code != 200:
            return False
        beats = [w.get("last_heartbeat_time") for w in reply.json() if w.get("name") == name]
        return any(b and dt.datetime.fromisoformat(b) > since for b in beats)

    # --- bring-up ----------------------------------------------------------------------------------------

    def up(self, timeout: float = 300.0, slurm: bool = False) -> dict[str, float]:
        """Bring the lab up (with ``slurm``: and a one-node SLURM on main); returns seconds per phase (and
        ``total``). On any failure, tears down first."""
        if os.geteuid() != 0:
            raise ConfigError(
                "labpipe lab simulate up", "needs root (network namespaces, PostgreSQL as postgres)", "run it as root"
            )
        if self.root.exists() or self.net.existing():
            raise ConfigError(self.root, "this simulated lab is up already", "`labpipe lab simulate down` first")
        for tool in ("setpriv", "sshd", "rrsync"):
            _tool(tool)
        postgres_bindir()
        timings: dict[str, float] = {}
        started = time.monotonic()
        mark = started
        self._slurm_asked = slurm

        def phase(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            timings[name] = round(now - mark, 2)
            mark = now

        try:
            self._make_folders()
            self.net.create()
            phase("network")
            make_certs(self.certs, {h: [self.net.address(h), f"{h}.lab"] for h in self.net.hosts}, lab=self.net.prefix)
            self._write_secrets()
            self._write_env_files()
            self._prepare_ssh()
            phase("certificates and secrets")
            self._init_postgres()
            self.start(self._service("postgres"))
            self._wait("PostgreSQL", self._postgres_ready, timeout, "postgres")
            self._create_databases()
            phase("postgresql")
            for name in ("prefect-server", "dask-scheduler", "dask-worker-main", "dask-worker-gpu", "sshd"):
                self.start(self._service(name))
            ready = lambda: self.api("GET", "/ready", auth=False).status_code == 200  # noqa: E731
            self._wait("the Prefect server", ready, timeout, "prefect-server")
            phase("prefect server")
            for name in ["worker-cpu", "worker-gpu", "worker-backup"] + [f"diskwatch-{h}" for h in DISKWATCH_HOSTS]:
                self.start(self._service(name))
            self._wait("the Dask scheduler", lambda: self.dask_worker_count() >= 2, timeout, "dask-scheduler")
            self._wait("sshd", lambda: self._listening("main", self.main, 22), timeout, "sshd")
            phase("dask and sshd")
            for pool in ("cpu", "gpu", "backup"):
                online = lambda p=pool: self.pool_workers_online(p)  # noqa: E731
                self._wait(f"the {pool} pool worker", online, timeout, f"worker-{pool}")
            for host in DISKWATCH_HOSTS:
                exporter = lambda h=host: self._listening(h, self.net.address(h), DISKWATCH_PORT)  # noqa: E731
                self._wait(f"the disk watch exporter on {host}", exporter, timeout, f"diskwatch-{host}")
            phase("pool workers and disk watch")
            if slurm:
                self.slurm.up(timeout, ports=SLURM_PORTS)
                phase("slurm")
        except BaseException:
            self.down()
            raise
        timings["total"] = round(time.monotonic() - started, 2)
        (self.root / "bringup.json").write_text(json.dumps(timings))
        return timings

    def _make_folders(self) -> None:
        self.root.mkdir(mode=0o711, parents=True)
        self.root.chmod(0o711)  # postgres (another account) reaches its folder below; nobody lists this one
        for folder, mode in ((self.secrets, 0o700), (self.ssh, 0o700), (self.certs, 0o755), (self.pids, 0o700)):
            folder.mkdir(mode=mode)
            folder.chmod(mode)
        for host in self.net.hosts:
            self.home(host).mkdir(parents=True)
        (self.root / "pg").mkdir(mode=0o711)

    def _write_secrets(self) -> None:
        password = {name: secrets.token_urlsafe(24) for name in ("auth", "prefect-db", "lab-db")}
        write_private(self.secrets / "passwords.json", json.dumps(password).encode())
        write_private(self.secret("prefect-auth"), f"{AUTH_USER}:{password['auth']}\n".encode())
        prefect_db = f"postgresql+asyncpg://prefect:{password['prefect-db']}@127.0.0.1:{POSTGRES_PORT}/prefect"
        write_private(self.secret("prefect-database-url"), f"{prefect_db}\n".encode())
        lab_db = f"postgresql://labpipe:{password['lab-db']}@{self.main}:{POSTGRES_PORT}/labpipe"
        write_private(self.secret("lab-database-url"), f"{lab_db}\n".encode())

    def _write_env_files(self) -> None:
        self.shared_env_file.parent.mkdir(exist_ok=True)
        files = {self.shared_env_file: ("every host", self.shared_env())}
        files |= {self.env_file(host): (f"the {host} host", self.host_env(host)) for host in self.net.hosts}
        for path, (whom, env) in files.items():
            lines = [f"# {whom} of the simulated lab; on a real host /etc/labpipe/{path.name} (docs/lab.md)"]
            lines += [f"{name}={value}" for name, value in env.items()]
            path.write_text("\n".join(lines) + "\n")

    def _prepare_ssh(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        def keypair(private_path: Path) -> str:
            key = ed25519.Ed25519PrivateKey.generate()
            private = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
            write_private(private_path, private)
            public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
            return public.decode()

        host_key = keypair(self.ssh / "host_ed25519_key")
        client = self.root / "hosts" / "backup" / "ssh"
        client.mkdir(mode=0o700, parents=True)
        pull_key = keypair(client / "id_ed25519")
        # the backup host's key can run one thing: a read-only rsync of main's labpipe home
        forced = f'restrict,command="{_tool("rrsync")} -ro {self.home("main")}"'
        write_private(self.ssh / "authorized_keys", f"{forced} {pull_key} backup-pull\n".encode())
        (client / "known_hosts").write_text(f"{self.main} {host_key}\n")
        (client / "config").write_text(
            f"Host main\n  HostName {self.main}\n  User root\n  IdentityFile {client / 'id_ed25519'}\n"
            f"  IdentitiesOnly yes\n  UserKnownHostsFile {client / 'known_hosts'}\n"
            "  StrictHostKeyChecking yes\n  BatchMode yes\n"
        )
        (self.ssh / "sshd_config").write_text(
            f"ListenAddress {self.main}:22\n"
            f"HostKey {self.ssh / 'host_ed25519_key'}\n"
            f"PidFile {self.ssh / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.ssh / 'authorized_keys'}\n"
            "AuthenticationMethods publickey\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin forced-commands-only\nAllowUsers root\nUsePAM no\n"
            "X11Forwarding no\nAllowTcpForwarding no\nAllowAgentForwarding no\nPermitTunnel no\nPermitTTY no\n"
            "PrintMotd no\n"
        )
        privsep = Path("/run/sshd")  # sshd's privilege separation folder (the ssh unit makes it on a real host)
        if not privsep.exists():
            privsep.mkdir(mode=0o755)
            (self.ssh / "made-run-sshd").touch()

    def _as_postgres(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        cmd = [_tool("setpriv"), f"--reuid={POSTGRES_USER}", f"--regid={POSTGRES_USER}", "--init-groups", *argv]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.pgdata.parent, **kwargs)

    def _init_postgres(self) -> None:
        import pwd

        account = pwd.getpwnam(POSTGRES_USER)
        for folder in (self.pgdata, self.pgsocket):
            folder.mkdir(mode=0o700)
            os.chown(folder, account.pw_uid, account.pw_gid)
        result = self._as_postgres(
            [str(postgres_bindir() / "initdb"), "-D", str(self.pgdata), "-U", POSTGRES_USER, "-E", "UTF8"]
            + ["--locale=C", "--auth-local=peer", "--auth-host=scram-sha-256", "--no-sync", "--no-instructions"]
        )
        if result.returncode != 0:
            raise ToolError("initdb", (result.stdout + result.stderr)[-2000:])
        (self.pgdata / "pg_hba.conf").write_text(
            "# the lab's PostgreSQL: peers on the socket (root maps to postgres), passwords over TCP, TLS off-host\n"
            "local all all peer map=lab\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
            f"hostssl all all {self.net.cidr} scram-sha-256\n"
        )
        (self.pgdata / "pg_ident.conf").write_text("lab root postgres\nlab postgres postgres\n")
        for source, target in (("main.pem", "server.crt"), ("main-key.pem", "server.key")):
            shutil.copyfile(self.certs / source, self.pgdata / target)
            os.chmod(self.pgdata / target, 0o600)
            os.chown(self.pgdata / target, account.pw_uid, account.pw_gid)

    def _postgres_connect(self, dbname: str = "postgres"):
        import psycopg2

        return psycopg2.connect(
            host=str(self.pgsocket), port=POSTGRES_PORT, user=POSTGRES_USER, dbname=dbname, connect_timeout=3
        )

    def _postgres_ready(self) -> bool:
        self._postgres_connect().close()
        return True

    def _create_databases(self) -> None:
        password = json.loads((self.secrets / "passwords.json").read_text())
        conn = self._postgres_connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            for role, key in (("prefect", "prefect-db"), ("labpipe", "lab-db")):
                cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (password[key],))
                cur.execute(f"CREATE DATABASE {role} OWNER {role}")
        conn.close()
        conn = self._postgres_connect("prefect")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")  # the Prefect server's migrations need it
        conn.close()

    # --- a host's death and return ----------------------------------------------------------------------

    def services_of(self, host: str) -> list[str]:
        return [s.name for s in self.services() if s.host == host]

    def power_off(self, host: str) -> list[int]:
        """``host`` dies at once: its link goes down and every process in its namespace is SIGKILLed (no
        process gets to say goodbye: flow runs stay Running on the server until their heartbeats are missed)."""
        self.net.set_link(host, up=False)
        pids = self.net.pids().get(self.net.namespace(host), [])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not self.net.pids().get(self.net.namespace(host)), 30)
        self._reap()
        return pids

    def power_on(self, host: str, timeout: float = 300.0) -> None:
        """``host`` is back: its link up and its services started again, as systemd does at boot."""
        import datetime as dt

        self.net.set_link(host, up=True)
        booted = dt.datetime.now(dt.UTC)
        for name in self.services_of(host):
            if self.pid(name) is None:
                self.start(self._service(name))
        for name in self.services_of(host):
            if name.startswith("worker-"):
                pool = name.removeprefix("worker-")
                beating = lambda p=pool: self.pool_worker_beat(p, f"{p}@{host}", booted)  # noqa: E731
                self._wait(f"the {pool} pool worker on {host}", beating, timeout, name)

    # --- status and teardown -----------------------------------------------------------------------------

    def status(self) -> dict:
        """Namespaces, services (pid or not running), addresses and the last bring-up's timings."""
        bringup = self.root / "bringup.json"
        return {
            "up": self.root.exists(),
            "folder": str(self.root),
            "namespaces": self.net.existing(),
            "addresses": {host: self.net.address(host) for host in self.net.hosts},
            "prefect_api": self.api_url,
            "dask_scheduler": self.dask_address,
            "services": {
                path.stem: {"host": path.read_text().split()[1], "pid": self.pid(path.stem)}
                for path in sorted(self.pids.glob("*.pid"))
            }
            if self.pids.exists()
            else {},
            "bringup_seconds": json.loads(bringup.read_text()) if bringup.exists() else None,
            "slurm": {d: self.slurm.pid(d) for d in ("munged", "slurmctld", "slurmd")} if self.with_slurm else None,
        }

    def _stop(self, names: list[str], sig: int = signal.SIGTERM, grace: float = 15.0) -> list[str]:
        running = {name: self.pid(name) for name in names}
        running = {name: pid for name, pid in running.items() if pid}
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)

        def gone() -> bool:
            self._reap()
            return not any(pid_alive(pid) for pid in running.values())

        wait_until(gone, grace)
        return list(running)

    def down(self) -> dict:
        """Stop every service (workers first, the database last), end what is left in the namespaces, delete
        them and the lab's folder. Safe to call on a lab that is half up, or not up at all."""
        stopped: list[str] = []
        if (self.root / "slurm").exists():  # its jobs first: they are Dask workers of flows on main
            stopped += [f"slurm {daemon}" for daemon in self.slurm.down()["stopped"]]
        if self.pids.exists():
            workers = ["worker-cpu", "worker-gpu", "worker-backup", "dask-worker-main", "dask-worker-gpu"]
            stopped += self._stop(workers + [f"diskwatch-{h}" for h in DISKWATCH_HOSTS])
            stopped += self._stop(["prefect-server", "dask-scheduler", "sshd"])
            stopped += self._stop(["postgres"], signal.SIGINT)  # fast shutdown: the lab is going away
        killed = self.net.kill_all()
        self._reap()
        namespaces = self.net.destroy()
        if (self.ssh / "made-run-sshd").exists():
            with contextlib.suppress(OSError):
                Path("/run/sshd").rmdir()
        existed = self.root.exists()
        shutil.rmtree(self.root, ignore_errors=True)
        return {"stopped": stopped, "killed": killed, "namespaces": namespaces, "folder_removed": existed}
