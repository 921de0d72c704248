"""The client service on each VM: register, check the GPU, heartbeat, run the user's command.

It registers when it boots (retrying until the allocator answers), checks the
GPU every ``gpu_interval`` seconds and heartbeats every ``heartbeat_interval``
seconds (at once when the GPU's health changes). When the allocator is down it
keeps checking and retries every few seconds, so it reconnects by itself after
an allocator restart. When its VM is assigned it starts the user's command as an
argument list (never a shell) in a fresh session folder, and stops it and
removes the folder when the VM is released. A revoked token (the VM was
rebooted or destroyed) or a destroyed VM ends the client.

Run it as ``labpipe vms client --allocator URL --token T`` or
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
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from labpipe.vms.gpu import check_gpu
from labpipe.vms.models import GpuFacts

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


class Stop(Exception):
    """The client should end with this exit code."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


class Session:
    """The user's command on this VM: a process group in its own folder."""

    def __init__(self, root: Path, owner: str, argv: list[str]) -> None:
        self.owner, self.argv = owner, argv
        self.folder = root / "session"
        self.process: subprocess.Popen | None = None
        self.state = "none"

    def start(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        if not self.argv:
            self.state = "no command"
            return
        env = dict(os.environ, LABPIPE_VM_OWNER=self.owner, HOME=str(self.folder))
        env.pop("LABPIPE_VMS_TOKEN", None)  # the user's program never sees the VM's credential
        log_file = open(self.folder / "command.log", "ab")  # noqa: SIM115 - the child keeps it open
        try:
            # an argument list and shell=False: what the user typed is data, never shell syntax
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.folder,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                shell=False,
            )
            self.state = "started"
        except OSError as exc:
            self.state = f"failed: {exc.strerror or exc}"[:64]
        finally:
            log_file.close()
        log.info("session for %s: %s (%s)", self.owner, self.argv, self.state)

    def poll(self) -> str:
        if self.process is not None and self.state == "started":
            code = self.process.poll()
            if code is not None:
                self.state = f"exited:{code}"
        return self.state

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        shutil.rmtree(self.folder, ignore_errors=True)  # the next user must not find this user's files


class VmClient:
    def __init__(self, config: ClientConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop_event = stop or threading.Event()
        self.http = httpx.Client(
            base_url=config.allocator.rstrip("/"),
            headers={"Authorization": f"Bearer {config.token}"},
            timeout=10.0,
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
        with httpx.Client(base_url=self.http.base_url, headers=self.http.headers, timeout=40.0) as http:
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
            self.session = Session(self.config.workdir, owner, [str(a) for a in argv])
            self.session.start()

    # -- the loop -------------------------------------------------------------------------------

    def check_gpu(self) -> bool:
        """Check the GPU; returns whether its health changed (then the allocator hears at once)."""
        before = (self.gpu.present, self.gpu.healthy)
        self.gpu = check_gpu(self.config.nvidia_smi)
        return (self.gpu.present, self.gpu.healthy) != before

    def run(self) -> int:
        self.config.workdir.mkdir(parents=True, exist_ok=True)
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
    """The token in ``path`` (first line); refuses a file others can read, as ssh does with keys."""
    path = Path(path)
    if path.stat().st_mode & 0o077:
        raise PermissionError(f"{path}: a token file must be readable by its owner only (chmod 600)")
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
    parser.add_argument("--token-file", type=Path, help="File holding the client token (cloud-init writes one)")
    args = parser.parse_args(argv)
    if args.token_file:
        args.token = read_token_file(args.token_file)
    if not args.token:
        parser.error("--token, --token-file or LABPIPE_VMS_TOKEN is required")
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
    )
    return run_client(config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
