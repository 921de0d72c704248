"""The local provisioner: each "VM" is a real client process on this machine, in its own folder.

Used by the tests and the demo, and honest on a single workstation: a VM here
registers, checks the GPU (finding none on a CPU host), heartbeats and runs its
user's command exactly as on a cloud VM; only the machine is shared. Each
client runs in its own session (process group) so it outlives the flow run that
started it; a thread reaps it if it dies while this process lives.

A user's token never means code execution as this account: the client runs each
user's command as ``session_account`` in a container it kills whole at release
(``labpipe.vms.session``), which needs the client to run as root; without root,
sessions are refused (the VM reports ``failed: ...`` as the command state). The
client token is a 0600 file in a 0700 ``secret`` folder of the VM's folder,
never in an environment or on a command line (``ps`` shows argv). VM hostnames
become folder names only through ``labpipe.files.path_component``; every
value reaches the client as one argument of an argument list, never a shell.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from labpipe.errors import LabpipeError
from labpipe.files import atomic_path, path_component
from labpipe.vms.provision import Provisioner, ProvisionFailure
from labpipe.vms.session import make_containment
from labpipe.vms.settings import LocalProvisionerSettings
from labpipe.vms.store import NewVm

CLIENT_MODULE = "labpipe.vms.client"


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _write_secret(path: Path, text: str) -> None:
    """``text`` in ``path``, mode 0600 from the start, in a 0700 folder."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text + "\n")


class LocalProvisioner(Provisioner):
    name = "local"

    def __init__(
        self,
        root: Path,
        *,
        python: str | None = None,
        gpu_interval: float = 20.0,
        heartbeat_interval: float = 30.0,
        sessions: LocalProvisionerSettings | None = None,
    ) -> None:
        self.root = Path(root)
        self.python = python or sys.executable
        self.gpu_interval, self.heartbeat_interval = gpu_interval, heartbeat_interval
        self.sessions = sessions or LocalProvisionerSettings()

    def describe(self) -> str:
        return f"local client processes under {self.root}"

    def folder(self, hostname: str) -> Path:
        return self.root / path_component(hostname, what="VM hostname")

    def token_file(self, hostname: str) -> Path:
        return self.folder(hostname) / "secret" / "client-token"

    def session_label(self, hostname: str) -> str:
        """Names the VM's session scope or cgroup: its hostname and where it lives (unique on this host)."""
        digest = hashlib.sha256(str(self.folder(hostname).absolute()).encode()).hexdigest()[:10]
        return f"{path_component(hostname, what='VM hostname')}-{digest}"

    def session_folder(self, hostname: str) -> Path:
        if self.sessions.session_root is None:
            return self.folder(hostname) / "session"
        return Path(self.sessions.session_root) / self.session_label(hostname)

    def client_argv(self, hostname: str, allocator_url: str) -> list[str]:
        argv = [
            self.python, "-m", CLIENT_MODULE,
            "--allocator", allocator_url,
            "--token-file", str(self.token_file(hostname)),
            "--workdir", str(self.folder(hostname)),
            "--address", "127.0.0.1",
            "--gpu-interval", f"{self.gpu_interval:g}",
            "--heartbeat-interval", f"{self.heartbeat_interval:g}",
            "--retry-interval", f"{min(5.0, self.heartbeat_interval):g}",
            "--session-account", self.sessions.session_account,
            "--session-folder", str(self.session_folder(hostname)),
            "--session-isolation", self.sessions.session_isolation,
            "--session-label", self.session_label(hostname),
        ]  # fmt: skip
        if self.sessions.cgroup_parent is not None:
            argv += ["--cgroup-parent", str(self.sessions.cgroup_parent)]
        return argv

    def _start(self, hostname: str, client_token: str, allocator_url: str) -> dict:
        folder = self.folder(hostname)
        for made in (self.root, folder):  # sessions inside may need to pass through; nobody may list them
            made.mkdir(parents=True, exist_ok=True)
            made.chmod(0o711)
        _write_secret(self.token_file(hostname), client_token)
        # the VM gets no database or Prefect credentials of this host, and its token only as a file
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABPIPE_", "PREFECT_"))}
        env["PYTHONUNBUFFERED"] = "1"
        log_fd = os.open(folder / "client.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = subprocess.Popen(
                self.client_argv(hostname, allocator_url),
                env=env, cwd=folder, stdout=log_fd, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        finally:
            os.close(log_fd)
        threading.Thread(target=process.wait, name=f"reap-{hostname}", daemon=True).start()
        return {
            "pid": process.pid,
            "folder": str(folder),
            "token_file": str(self.token_file(hostname)),
            "session_folder": str(self.session_folder(hostname)),
            "started": time.time(),
        }

    def create(self, vms: list[NewVm], allocator_url: str) -> dict[int, dict | Exception]:
        results: dict[int, dict | Exception] = {}
        for vm in vms:
            try:
                results[vm.id] = self._start(vm.hostname, vm.client_token, allocator_url)
            except (OSError, LabpipeError) as exc:
                results[vm.id] = ProvisionFailure(f"VM {vm.hostname!r}", f"cannot start the client: {exc}")
        return results

    def _ours(self, pid: int, hostname: str) -> bool:
        """Whether ``pid`` is still this VM's client (a pid may have been reused since)."""
        argv = _cmdline(pid)
        return CLIENT_MODULE in argv and str(self.folder(hostname)) in argv

    def stop(self, row: dict, timeout: float = 10.0) -> None:
        """Stop the VM's client process group (SIGTERM, then SIGKILL) and any session it left; nothing if gone."""
        hostname = row["hostname"]
        pid = (row.get("provider_ref") or {}).get("pid")
        if pid and _alive(pid) and self._ours(pid, hostname):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        # a client killed outright cannot end its session: end it here, so no user process outlives the VM
        with contextlib.suppress(LabpipeError):
            settings = self.sessions
            make_containment(settings.session_isolation, self.session_label(hostname), settings.cgroup_parent).kill(0)
        shutil.rmtree(self.session_folder(hostname), ignore_errors=True)

    def running(self, row: dict) -> bool:
        pid = (row.get("provider_ref") or {}).get("pid")
        return bool(pid) and _alive(pid) and self._ours(pid, row["hostname"])

    def destroy(self, rows: list[dict]) -> dict[int, Exception | None]:
        results: dict[int, Exception | None] = {}
        for row in rows:
            try:
                folder = self.folder(row["hostname"])
                self.stop(row)
                if folder.exists():  # keep the client's log for a post-mortem, drop the rest
                    graveyard = self.root / ".destroyed"
                    graveyard.mkdir(parents=True, exist_ok=True)
                    with contextlib.suppress(FileNotFoundError):
                        shutil.move(folder / "client.log", graveyard / f"{row['hostname']}-{int(time.time())}.log")
                    shutil.rmtree(folder)
                results[row["id"]] = None
            except (OSError, LabpipeError) as exc:
                results[row["id"]] = ProvisionFailure(f"VM {row['hostname']!r}", str(exc))
        return results

    def reboot(self, row: dict, client_token: str, allocator_url: str) -> dict:
        self.folder(row["hostname"])  # a hostname that cannot be a folder name stops here
        self.stop(row)
        return self._start(row["hostname"], client_token, allocator_url)
