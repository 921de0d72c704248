"""The client service on each VM: register, check the GPU, heartbeat, run the user's command.

It registers when it boots (retrying until the allocator answers), checks the
GPU every ``gpu_interval`` seconds and heartbeats every ``heartbeat_interval``
seconds (at once when the GPU's health changes). When the allocator is down it
keeps checking and retries every few seconds, so it reconnects by itself after
an allocator restart. A revoked token (the VM was rebooted or destroyed) or a
destroyed VM ends the client.

When its VM is assigned it starts the user's command as an argument list (never
a shell) as the unprivileged ``session_account``, in a fresh 0700 session folder
and a container of its own (``labpipe.vms.session``: a systemd scope, or a
cgroup v2 folder where systemd is not running); at release it kills the whole
container, so no process of the user (``setsid``, daemons) outlives the session,
and removes the folder. The client's token is read from a 0600 file in a 0700
folder owned by the client's account, never from the session's reach; the
session's environment is built from nothing but its own names.

It talks to the allocator over HTTPS (``--ca-file`` names the CA to trust); a
plain ``http://`` allocator on another host is refused, as it would send the
token in clear (loopback is fine, and so is ``--allow-plain-http`` on a link
encrypted below HTTP).

Run it as ``labpipe vms client --allocator URL --token-file F`` or
``python -m labpipe.vms.client`` (the local provisioner does the latter).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from labpipe.errors import ConfigError, LabpipeError
from labpipe.vms.gpu import check_gpu
from labpipe.vms.models import GpuFacts, is_loopback
from labpipe.vms.session import (
    SAFE_PATH,
    Containment,
    SessionAccount,
    make_containment,
    session_label,
    unreachable_ancestor,
)

log = logging.getLogger("labpipe.vms.client")
CLIENT_VERSION = "1"
EXIT_OK, EXIT_REVOKED = 0, 3


@dataclass
class ClientConfig:
    allocator: str
    token: str
    workdir: Path
    gpu_interval: float = 20.0
    heartbeat_interval: float = 30.0
    retry_interval: float = 5.0
    address: str = field(default_factory=socket.gethostname)
    connection: dict = field(default_factory=dict)
    nvidia_smi: str | None = None
    ca_file: Path | None = None  # the CA that signed the allocator's certificate (else the system's)
    allow_plain_http: bool = False  # http:// to another host: only on a link encrypted below HTTP
    session_account: str = "labpipe-vm"
    session_folder: Path | None = None  # empty: <workdir>/session
    session_isolation: str = "auto"
    cgroup_parent: Path | None = None
    session_label: str | None = None  # names the session's scope or cgroup; empty: from the workdir
    stop_grace: float = 5.0  # seconds between SIGTERM and SIGKILL at release

    def folder(self) -> Path:
        return Path(self.session_folder or Path(self.workdir) / "session")

    def label(self) -> str:
        return self.session_label or session_label(self.workdir)


def check_transport(url: str, allow_plain_http: bool = False) -> None:
    """Refuse to send a bearer token in clear to another host."""
    parts = urlsplit(url)
    if parts.scheme == "https" or allow_plain_http:
        return
    if parts.scheme == "http" and is_loopback(parts.hostname or ""):
        return
    raise ConfigError(
        url,
        "the token would travel in clear to another host",
        "use the allocator's https:// URL (and --ca-file for its CA), or --allow-plain-http on an encrypted link",
    )


def tls_verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=str(ca_file)) if ca_file else True


class Stop(Exception):
    """The client should end with this exit code."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def session_environment(account: SessionAccount, owner: str, folder: Path) -> dict[str, str]:
    """The session's whole environment: nothing of the client's (its token, proxies, credentials) leaks in."""
    return {
        "PATH": SAFE_PATH,
        "HOME": str(folder),
        "USER": account.name,
        "LOGNAME": account.name,
        "LANG": "C.UTF-8",
        "LABPIPE_VM_OWNER": owner,
    }


class Session:
    """The user's command on this VM: as the session account, in its own folder and container."""

    def __init__(self, config: ClientConfig, owner: str, argv: list[str]) -> None:
        self.config, self.owner, self.argv = config, owner, argv
        self.folder = config.folder()
        self.process: subprocess.Popen | None = None
        self.containment: Containment | None = None
        self.state = "none"

    def _prepare_folder(self, account: SessionAccount) -> int:
        """A fresh 0700 folder owned by the account, with its log; returns the log's descriptor."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(mode=0o700)
        log_fd = os.open(self.folder / "command.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.fchown(log_fd, account.uid, account.gid)
        os.chown(self.folder, account.uid, account.gid)
        return log_fd

    def start(self) -> None:
        if not self.argv:
            self.state = "no command"
            return
        try:
            account = SessionAccount.resolve(self.config.session_account)
            if os.geteuid() != 0:
                raise ConfigError(
                    f"uid {os.geteuid()}",
                    f"this client cannot run sessions as {account.name}",
                    "run the VM client as root (its service); it never runs users' commands as itself",
                )
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            blocked = unreachable_ancestor(self.folder, account)
            if blocked is not None:
                raise ConfigError(blocked, f"{account.name} cannot reach its session folder {self.folder} through it")
            self.containment = make_containment(
                self.config.session_isolation, self.config.label(), self.config.cgroup_parent
            )
            log_fd = self._prepare_folder(account)
        except (LabpipeError, OSError) as exc:
            self.state = f"failed: {getattr(exc, 'problem', None) or exc}"[:64]
            log.error("session for %s not started: %s", self.owner, exc)
            return
        try:
            # an argument list and shell=False: what the user typed is data, never shell syntax
            self.process = subprocess.Popen(
                self.containment.command(account, self.argv),
                cwd=self.folder,
                env=session_environment(account, self.owner, self.folder),
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                shell=False,
            )
            self.state = "started"
        except (LabpipeError, OSError) as exc:
            self.state = f"failed: {getattr(exc, 'strerror', None) or exc}"[:64]
        finally:
            os.close(log_fd)
        log.info("session for %s as %s in a %s: %s (%s)", self.owner, account.name,
                 self.containment.kind, self.argv, self.state)  # fmt: skip

    def poll(self) -> str:
        if self.process is not None and self.state == "started":
            code = self.process.poll()
            if code is not None:
                self.state = f"exited:{code}"
        return self.state

    def stop(self) -> None:
        """End every process of the session (whatever it detached) and remove its folder."""
        if self.containment is not None:
            self.containment.kill(self.config.stop_grace)
        if self.process is not None:
            # the entry process may not have joined its cgroup yet: end it directly, then sweep the cgroup again
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            if self.containment is not None:
                self.containment.kill(0)
        shutil.rmtree(self.folder, ignore_errors=True)  # the next user must not find this user's files


class VmClient:
    def __init__(self, config: ClientConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop_event = stop or threading.Event()
        check_transport(config.allocator, config.allow_plain_http)
        self.verify = tls_verify(config.ca_file)
        self.http = httpx.Client(
            base_url=config.allocator.rstrip("/"),
            headers={"Authorization": f"Bearer {config.token}"},
            timeout=10.0,
            verify=self.verify,
        )
        self.vm_id: int | None = None
        self.gpu: GpuFacts = GpuFacts(present=False, healthy=True, detail="not checked yet")
        self.session: Session | None = None
        self.beats = 0
        self.known: tuple[str, str] = ("", "")  # (state, owner) as last heard from the allocator
        self.wake = threading.Event()  # set by the watcher when the allocator changes this VM

    def stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def watch(self) -> None:
        """Long-poll the allocator for changes of this VM, so an assignment starts at once, not at the next beat."""
        options = {"headers": self.http.headers, "timeout": 40.0, "verify": self.verify}
        with httpx.Client(base_url=self.http.base_url, **options) as http:
            while not self.stop_event.is_set():
                if self.vm_id is None:
                    self.stop_event.wait(0.2)
                    continue
                state, owner = self.known
                try:
                    response = http.get(
                        f"/vms/{self.vm_id}/wait", params={"state": state, "owner": owner, "timeout": 25}
                    )
                except httpx.HTTPError:
                    self.stop_event.wait(self.config.retry_interval)
                    continue
                if response.status_code != 200:
                    self.stop_event.wait(self.config.retry_interval)
                    continue
                vm = response.json()
                if (vm.get("state", ""), vm.get("owner") or "") != self.known:
                    self.wake.set()

    # -- talking to the allocator ---------------------------------------------------------------

    def _post(self, path: str, body: dict) -> dict | None:
        """POST and return the JSON answer; None when the allocator is unreachable or busy (retry later)."""
        try:
            response = self.http.post(path, json=body)
        except httpx.HTTPError as exc:
            log.warning("allocator unreachable at %s%s (%s); retrying", self.config.allocator, path, exc)
            return None
        if response.status_code in (401, 403):
            raise Stop(
                EXIT_REVOKED, f"the allocator refused this VM's token ({response.status_code}): {response.text[:200]}"
            )
        if response.status_code == 410:
            raise Stop(EXIT_OK, f"the VM was destroyed: {response.text[:200]}")
        if response.status_code == 409:
            return {"conflict": response.json()}
        if response.status_code >= 500 or response.status_code == 429:
            log.warning("allocator answered %s at %s; retrying", response.status_code, path)
            return None
        if response.status_code >= 400:
            raise Stop(2, f"the allocator rejected {path} ({response.status_code}): {response.text[:500]}")
        return response.json()

    def register(self) -> dict:
        """Register, retrying until the allocator answers (it may boot after this VM)."""
        while not self.stop_event.is_set():
            body = {
                "address": self.config.address,
                "connection": self.config.connection,
                "gpu": self.gpu.model_dump(),
                "pid": os.getpid(),
                "client_version": CLIENT_VERSION,
            }
            answer = self._post("/vms/register", body)
            if answer is not None and "conflict" not in answer:
                self.vm_id = answer["id"]
                log.info("registered as VM %s (%s), state %s", answer["id"], answer["hostname"], answer["state"])
                return answer
            if answer is not None:
                log.warning("registration refused: %s", answer["conflict"].get("detail"))
            self.stop_event.wait(self.config.retry_interval)
        raise Stop(EXIT_OK, "stopped before registering")

    def heartbeat(self) -> dict | None:
        command_state = self.session.poll() if self.session else None
        body = {"status": "busy" if command_state == "started" else "ok", "gpu": self.gpu.model_dump()}
        if command_state:
            body["command_state"] = command_state
        answer = self._post(f"/vms/{self.vm_id}/heartbeat", body)
        if answer is not None and "conflict" in answer:
            detail = str(answer["conflict"].get("detail", ""))
            if "not registered" in detail:
                return self.register()
            log.warning("heartbeat refused: %s", detail)
            return None
        if answer is not None:
            self.beats += 1
        return answer

    # -- the user's session ---------------------------------------------------------------------

    def follow(self, vm: dict) -> None:
        """Start the user's command when the VM is assigned; stop it when the assignment ends."""
        self.known = (vm.get("state", ""), vm.get("owner") or "")
        owner = vm.get("owner") if vm.get("state") == "in_use" else None
        if self.session and self.session.owner != owner:
            log.info("assignment of %s ended; stopping its session", self.session.owner)
            self.session.stop()
            self.session = None
        if owner and self.session is None:
            argv = vm.get("user_command") or vm.get("command") or []
            self.session = Session(self.config, owner, [str(a) for a in argv])
            self.session.start()

    # -- the loop -------------------------------------------------------------------------------

    def check_gpu(self) -> bool:
        """Check the GPU; returns whether its health changed (then the allocator hears at once)."""
        before = (self.gpu.present, self.gpu.healthy)
        self.gpu = check_gpu(self.config.nvidia_smi)
        return (self.gpu.present, self.gpu.healthy) != before

    def clear_leftovers(self) -> None:
        """A previous client of this VM died holding a session: end it before anyone else gets the VM."""
        try:
            make_containment(self.config.session_isolation, self.config.label(), self.config.cgroup_parent).kill(0)
        except LabpipeError as exc:
            log.debug("no session container to clear: %s", exc)
        shutil.rmtree(self.config.folder(), ignore_errors=True)

    def run(self) -> int:
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        self.clear_leftovers()
        try:
            self.check_gpu()
            log.info("GPU: %s", self.gpu.detail)
            self.follow(self.register())
            threading.Thread(target=self.watch, name="vm-watch", daemon=True).start()
            next_gpu = time.monotonic() + self.config.gpu_interval
            next_beat = time.monotonic() + self.config.heartbeat_interval
            while not self.stop_event.is_set():
                urgent = self.wake.wait(max(0.0, min(next_gpu, next_beat) - time.monotonic()))
                self.wake.clear()
                if self.stop_event.is_set():
                    break
                now = time.monotonic()
                if now >= next_gpu:
                    urgent = self.check_gpu() or urgent
                    next_gpu = now + self.config.gpu_interval
                if now >= next_beat or urgent:
                    answer = self.heartbeat()
                    if answer is None:  # allocator away: come back sooner than a full interval
                        next_beat = now + min(self.config.retry_interval, self.config.heartbeat_interval)
                    else:
                        self.follow(answer)
                        next_beat = now + self.config.heartbeat_interval
            return EXIT_OK
        except Stop as stop:
            log.warning("client stops: %s", stop)
            return stop.code
        finally:
            if self.session:
                self.session.stop()
            self.http.close()


def read_token_file(path: Path) -> str:
    """The token in ``path`` (first line): a 0600 file in a 0700 folder, both this account's, as ssh wants keys."""
    path = Path(path)
    me = os.geteuid()
    for thing, limit, fix in ((path, 0o600, "chmod 600"), (path.parent, 0o700, "chmod 700")):
        info = thing.stat()
        if info.st_uid != me:
            raise PermissionError(f"{thing}: owned by uid {info.st_uid}, not by this client's account (uid {me})")
        if stat.S_IMODE(info.st_mode) & ~limit & 0o777:
            raise PermissionError(f"{thing}: others may reach the client token ({fix} {thing})")
    return path.read_text().strip().splitlines()[0]


def run_client(config: ClientConfig) -> int:
    """Run until SIGTERM/SIGINT, a revoked token or a destroyed VM; returns the exit code."""
    client = VmClient(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: client.stop())
    return client.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labpipe.vms.client", description=__doc__.split("\n")[0])
    parser.add_argument("--allocator", required=True, help="Allocator URL, e.g. http://10.0.0.5:8765")
    parser.add_argument(
        "--token", default=os.environ.get("LABPIPE_VMS_TOKEN"), help="Client token (or LABPIPE_VMS_TOKEN)"
    )
    parser.add_argument("--workdir", type=Path, default=Path.cwd())
    parser.add_argument("--gpu-interval", type=float, default=20.0)
    parser.add_argument("--heartbeat-interval", type=float, default=30.0)
    parser.add_argument("--retry-interval", type=float, default=5.0)
    parser.add_argument("--address", default=socket.gethostname())
    parser.add_argument("--token-file", type=Path, help="File holding the client token (0600 in a 0700 folder)")
    parser.add_argument("--ca-file", type=Path, help="CA certificate the allocator's TLS certificate is signed by")
    parser.add_argument("--allow-plain-http", action="store_true", help="Allow http:// to another host")
    parser.add_argument("--session-account", default="labpipe-vm", help="Account users' commands run as")
    parser.add_argument("--session-folder", type=Path, help="The session's folder (default: WORKDIR/session)")
    parser.add_argument("--session-isolation", default="auto", choices=["auto", "systemd", "cgroup"])
    parser.add_argument("--cgroup-parent", type=Path, help="cgroup v2 folder for session cgroups")
    parser.add_argument("--session-label", help="Name of the session's scope or cgroup (unique on this host)")
    args = parser.parse_args(argv)
    if args.token_file:
        args.token = read_token_file(args.token_file)
    if not args.token:
        parser.error("--token, --token-file or LABPIPE_VMS_TOKEN is required")
    os.environ.pop("LABPIPE_VMS_TOKEN", None)  # nothing this process starts inherits it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per heartbeat would bury what matters
    config = ClientConfig(
        allocator=args.allocator,
        token=args.token,
        workdir=args.workdir,
        gpu_interval=args.gpu_interval,
        heartbeat_interval=args.heartbeat_interval,
        retry_interval=args.retry_interval,
        address=args.address,
        ca_file=args.ca_file,
        allow_plain_http=args.allow_plain_http,
        session_account=args.session_account,
        session_folder=args.session_folder,
        session_isolation=args.session_isolation,
        cgroup_parent=args.cgroup_parent,
        session_label=args.session_label,
    )
    try:
        return run_client(config)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
