"""Background processes labpipe starts (Prefect server, workers): pid files, logs, stop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from labpipe.files import atomic_write_text
from labpipe.procs import pid_alive, wait_until


def _stat_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live, non-zombie process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid, group = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue  # the process ended while we looked
        if state != "Z":
            table[int(entry.name)] = (int(ppid), int(group))
    return table


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (a zombie, killed and not yet reaped, no longer counts)."""
    if not Path("/proc").is_dir():  # pragma: no cover - labpipe hosts are Linux
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    return [pid for pid, (_ppid, group) in _stat_table().items() if group == pgid]


def tree_groups(pid: int) -> set[int]:
    """The process groups of ``pid``'s group and of all its descendants.

    Prefect's worker starts each flow run in a session of its own, so a group-wide signal to the
    worker does not reach its runs (nor what they started); once the worker is gone they would be
    orphans. ``stop`` signals every group found here, as systemd's control group does on a host.
    """
    if not Path("/proc").is_dir():  # pragma: no cover - labpipe hosts are Linux
        return {pid}
    table = _stat_table()
    groups, parents = {pid}, {pid} | {p for p, (_pp, g) in table.items() if g == pid}
    grew = True
    while grew:
        children = {p for p, (pp, _g) in table.items() if pp in parents} - parents
        grew = bool(children)
        parents |= children
        groups |= {table[c][1] for c in children}
    return groups


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
        """SIGTERM the process group and its descendants' groups, SIGKILL what is left after ``timeout``.

        Returns whether it ran, once no process of those groups is left (a server's children, a worker's
        flow runs in their own sessions, what they started), so that ports are free and files closed
        when the caller goes on.
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        groups = tree_groups(pid)

        def signal_all(sig: int) -> None:
            groups.update(tree_groups(pid) if pid_alive(pid) else ())  # runs started while stopping
            for group in groups:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(group, sig)

        def gone() -> bool:
            return not any(group_members(group) for group in groups)

        signal_all(signal.SIGTERM)
        if not wait_until(gone, timeout):
            signal_all(signal.SIGKILL)
            wait_until(gone, 10.0)
        self.pid_file.unlink(missing_ok=True)
        return True
