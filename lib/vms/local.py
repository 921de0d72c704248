"""The local provisioner: each "VM" is a real client process on this machine, in its own folder.

Used by the tests and the demo, and honest on a single workstation: a VM here
registers, checks the GPU (finding none on a CPU host), heartbeats and runs its
user's command exactly as on a cloud VM; only the machine is shared. Each
client runs in its own session (process group) so it outlives the flow run that
started it; a thread reaps it if it dies while this process lives. The client
token travels in the environment, never on the command line (``ps`` shows argv).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from labpipe.vms.provision import Provisioner, ProvisionFailure
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


class LocalProvisioner(Provisioner):
    name = "local"

    def __init__(
        self, root: Path, *, python: str | None = None, gpu_interval: float = 20.0, heartbeat_interval: float = 30.0
    ) -> None:
        self.root = Path(root)
        self.python = python or sys.executable
        self.gpu_interval, self.heartbeat_interval = gpu_interval, heartbeat_interval

    def describe(self) -> str:
        return f"local client processes under {self.root}"

    def folder(self, hostname: str) -> Path:
        return self.root / hostname

    def client_argv(self, hostname: str, allocator_url: str) -> list[str]:
        return [
            self.python, "-m", CLIENT_MODULE,
            "--allocator", allocator_url,
            "--workdir", str(self.folder(hostname)),
            "--address", "127.0.0.1",
            "--gpu-interval", f"{self.gpu_interval:g}",
            "--heartbeat-interval", f"{self.heartbeat_interval:g}",
            "--retry-interval", f"{min(5.0, self.heartbeat_interval):g}",
        ]  # fmt: skip

    def _start(self, hostname: str, client_token: str, allocator_url: str) -> dict:
        folder = self.folder(hostname)
        folder.mkdir(parents=True, exist_ok=True)
        # the VM gets no database or Prefect credentials of this host, only its own token
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LABPIPE_", "PREFECT_"))}
        env["LABPIPE_VMS_TOKEN"] = client_token
        env["PYTHONUNBUFFERED"] = "1"
        with open(folder / "client.log", "ab") as log:
            process = subprocess.Popen(
                self.client_argv(hostname, allocator_url),
                env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        threading.Thread(target=process.wait, name=f"reap-{hostname}", daemon=True).start()
        return {"pid": process.pid, "folder": str(folder), "started": time.time()}

    def create(self, vms: list[NewVm], allocator_url: str) -> dict[int, dict | Exception]:
        results: dict[int, dict | Exception] = {}
        for vm in vms:
            try:
                results[vm.id] = self._start(vm.hostname, vm.client_token, allocator_url)
            except OSError as exc:
                results[vm.id] = ProvisionFailure(f"{vm.hostname}: cannot start the client: {exc}")
        return results

    def _ours(self, pid: int, hostname: str) -> bool:
        """Whether ``pid`` is still this VM's client (a pid may have been reused since)."""
        argv = _cmdline(pid)
        return CLIENT_MODULE in argv and str(self.folder(hostname)) in argv

    def stop(self, row: dict, timeout: float = 10.0) -> None:
        """Stop the VM's client process group (SIGTERM, then SIGKILL); nothing if it is gone already."""
        pid = (row.get("provider_ref") or {}).get("pid")
        if not pid or not _alive(pid) or not self._ours(pid, row["hostname"]):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)

    def running(self, row: dict) -> bool:
        pid = (row.get("provider_ref") or {}).get("pid")
        return bool(pid) and _alive(pid) and self._ours(pid, row["hostname"])

    def destroy(self, rows: list[dict]) -> dict[int, Exception | None]:
        results: dict[int, Exception | None] = {}
        for row in rows:
            try:
                self.stop(row)
                folder = self.folder(row["hostname"])
                if folder.exists():  # keep the client's log for a post-mortem, drop the rest
                    graveyard = self.root / ".destroyed"
                    graveyard.mkdir(parents=True, exist_ok=True)
                    with contextlib.suppress(FileNotFoundError):
                        shutil.move(folder / "client.log", graveyard / f"{row['hostname']}-{int(time.time())}.log")
                    shutil.rmtree(folder)
                results[row["id"]] = None
            except OSError as exc:
                results[row["id"]] = ProvisionFailure(f"{row['hostname']}: {exc}")
        return results

    def reboot(self, row: dict, client_token: str, allocator_url: str) -> dict:
        self.stop(row)
        shutil.rmtree(self.folder(row["hostname"]) / "session", ignore_errors=True)
        return self._start(row["hostname"], client_token, allocator_url)
