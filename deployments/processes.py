"""Background processes labpipe starts (Prefect server, workers): pid files, logs, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from labpipe.files import atomic_write_text
from labpipe.procs import pid_alive, wait_until


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (a zombie, killed and not yet reaped, no longer counts)."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - labpipe hosts are Linux
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, _ppid, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # the process ended while we looked
        if int(group) == pgid and state != "Z":
            members.append(int(entry.name))
    return members


class ManagedProcess:
    """A detached process in its own session, remembered by a pid file under ``run_dir``."""

    def __init__(self, name: str, run_dir: Path, log_dir: Path) -> None:
        self.name = name
        self.pid_file = Path(run_dir) / f"{name}.pid"
        self.log_file = Path(log_dir) / f"{name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, cmd: list[str], env: dict, cwd: Path | None = None) -> int:
        existing = self.pid()
        if existing:
            return existing
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                cmd,
                env=env,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        atomic_write_text(self.pid_file, f"{process.pid}\n{' '.join(cmd)}\n")  # never read half-written
        return process.pid

    def stop(self, timeout: float = 20.0) -> bool:
        """SIGTERM the whole process group, SIGKILL what is left after ``timeout``; returns whether it ran.

        Returns once no process of the group is left (a server's children, a worker's flow runs), so that
        its ports are free and its files closed when the caller goes on.
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        if not wait_until(lambda: not group_members(pid), timeout):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            wait_until(lambda: not group_members(pid), 10.0)
        self.pid_file.unlink(missing_ok=True)
        return True
