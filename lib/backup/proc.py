"""External programs (borg, rsync, rclone) run so that stopping the run stops them too.

Each program starts in its own process group (so ssh and other helpers it
spawns go with it) and with the kernel's parent-death signal set, so it gets
SIGTERM even when the flow process is killed outright. While we wait for it,
any exception in the waiting thread (Prefect raises one on cancellation when
the worker sends SIGTERM) stops the group: SIGTERM first, which borg and rsync
handle by releasing locks and leaving their targets consistent, then SIGKILL
after a grace period.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.errors import ToolError

_PR_SET_PDEATHSIG = 1
_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()
_LINE_END = re.compile(rb"[\r\n]")

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - not Linux
    _libc = None


def _child_setup() -> None:
    # runs in the child between fork and exec: die with the parent (Linux), whatever killed it
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class ToolResult:
    """What a finished program returned."""

    cmd: list[str]
    returncode: int
    stdout: str
    stderr: list[str] = field(default_factory=list)  # the last lines, at most ``keep_lines``
    seconds: float = 0.0

    def stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(self.stderr[-lines:])


def _pump(stream, sink: list | deque, on_line: Callable[[str], None] | None) -> None:
    buffer = b""
    for block in iter(lambda: stream.read1(65536), b""):
        buffer += block
        *lines, buffer = _LINE_END.split(buffer)
        for raw in lines:
            if raw:
                line = raw.decode(errors="replace")
                sink.append(line)
                if on_line is not None:
                    on_line(line)
    if buffer:
        line = buffer.decode(errors="replace")
        sink.append(line)
        if on_line is not None:
            on_line(line)


def stop_group(process: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the program's process group, then SIGKILL what is still there after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def terminate_all(grace: float = 15.0) -> int:
    """Stop every program started here that still runs (cancellation hooks, exit); returns how many."""
    with _running_lock:
        processes = list(_running)
    for process in processes:
        stop_group(process, grace)
    return len(processes)


atexit.register(terminate_all, 5.0)


def run_tool(
    cmd: Sequence[str | Path],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    on_stdout: Callable[[str], None] | None = None,
    on_stderr: Callable[[str], None] | None = None,
    keep_lines: int = 5000,
    timeout: float | None = None,
) -> ToolResult:
    """Run ``cmd`` to completion and return its output; never raises on a non-zero exit.

    ``on_stdout``/``on_stderr`` get each line as it arrives (carriage returns
    split lines too, so progress meters are seen live). A missing program is a
    ``ToolError``; a timeout or any exception while waiting stops the program.
    """
    cmd = [str(part) for part in cmd]
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            cmd,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
    except FileNotFoundError as exc:
        raise ToolError(cmd[0], "program not found", "install it (see README: make install)") from exc
    with _running_lock:
        _running.add(process)
    stdout: list[str] = []
    stderr: deque[str] = deque(maxlen=keep_lines)
    readers = [
        threading.Thread(target=_pump, args=(process.stdout, stdout, on_stdout), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, stderr, on_stderr), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        while True:
            try:
                process.wait(timeout=0.5)  # short waits keep the thread responsive to signals
                break
            except subprocess.TimeoutExpired:
                if timeout is not None and time.monotonic() - started > timeout:
                    raise ToolError(Path(cmd[0]).name, f"did not finish within {timeout:.0f} s; stopped") from None
        for reader in readers:
            reader.join()
    except BaseException:
        stop_group(process)
        raise
    finally:
        with _running_lock:
            _running.discard(process)
    return ToolResult(cmd, process.returncode, "\n".join(stdout), list(stderr), time.monotonic() - started)


TOOL_NAMES = ("borg", "rsync", "rclone", "ssh")


def stop_tool_children(names: tuple[str, ...] = TOOL_NAMES, grace: float = 10.0) -> list[int]:
    """Stop this process's descendants that run one of ``names`` (and the shells that started them).

    For tools started by libraries that do not use ``run_tool`` (rclone-python
    runs rclone through a shell); called when a run is cancelled.
    """
    import psutil

    terminate_all(grace)
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            argv = child.cmdline()
            words = [Path(a).name for a in argv[:1]] + [Path(a).name for a in argv[1:2] if argv[:1] != argv[1:2]]
            text = " ".join(argv[:3])
            if child.name() in names or any(w in names for w in words) or any(f"{n} " in text for n in names):
                found.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for child in found:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(found, timeout=grace)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    return [c.pid for c in found]
