"""External programs (borg, rsync, rclone) run so that stopping the run stops them too.

Each program starts in its own process group (so ssh and other helpers it
spawns go with it) and with the kernel's parent-death signal set, so it gets
SIGTERM even when the flow process is killed outright. Neither needs Python code
in the forked child (a ``preexec_fn``, unsafe in a threaded process: it can
deadlock on a lock another thread held at the fork): ``start_new_session`` is
done by subprocess's C code, and the death signal by ``labpipe.backup.deathsig``,
a small program exec'd first that arms it and then execs the tool. While we wait for it,
any exception in the waiting thread (Prefect raises one on cancellation when
the worker sends SIGTERM) stops the group: SIGTERM first, which borg and rsync
handle by releasing locks and leaving their targets consistent, then SIGKILL
after a grace period.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.errors import ToolError

_DEATHSIG = Path(__file__).with_name("deathsig.py")
_running: set[subprocess.Popen] = set()
_running_lock = threading.Lock()
_LINE_END = re.compile(rb"[\r\n]")


def with_death_signal(cmd: list[str], sig: int = signal.SIGTERM) -> list[str]:
    """``cmd`` prefixed by the wrapper that arms the parent-death signal and then execs it (same pid)."""
    return [sys.executable, "-I", "-S", str(_DEATHSIG), str(os.getpid()), str(int(sig)), *cmd]


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
    search = (env if env is not None else os.environ).get("PATH")
    if shutil.which(cmd[0], path=search) is None:
        raise ToolError(cmd[0], "program not found", "install it (see README: make install)")
    process = subprocess.Popen(
        with_death_signal(cmd),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # setsid() in subprocess's C code: no Python between fork and exec
    )
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

    For tools started other than by ``run_tool``; called when a run is cancelled.
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
