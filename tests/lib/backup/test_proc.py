"""External tools die with the run that started them, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

PULL_SCRIPT = """
from pathlib import Path
from labpipe.backup.pull import pull_source
from labpipe.backup.settings import BackupSource
pull_source(BackupSource(name="share", path={src!r}), Path({dest!r}), extra_args=["--bwlimit=20"])
"""


def _wait_for_child(parent: subprocess.Popen, name: str, timeout: float = 60) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(parent.pid).children(recursive=True):
            try:
                if child.name() == name:
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.1)
    raise AssertionError(f"{name} never started")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_rsync_stops_when_the_run_is_stopped_or_killed(tmp_path, how):
    """A pull throttled to 20 kB/s; its Python process is terminated (or killed outright): rsync goes too."""
    src = tmp_path / "share"
    src.mkdir()
    (src / "stack.tif").write_bytes(os.urandom(3_000_000))
    script = textwrap.dedent(PULL_SCRIPT.format(src=str(src), dest=str(tmp_path / "staging")))
    runner = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        rsync = _wait_for_child(runner, "rsync")
        runner.send_signal(how)
        runner.wait(timeout=30)
        gone, alive = psutil.wait_procs([rsync], timeout=20)
        assert not alive, f"rsync {rsync.pid} survived {how.name} of its run"
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
        for proc in psutil.process_iter(["name", "cmdline"]):
            if proc.info["name"] == "rsync" and str(src) in " ".join(proc.info["cmdline"] or []):
                proc.kill()


class Cancelled(BaseException):
    """Stands for Prefect's TerminationSignal, raised in the main thread by its SIGTERM handler."""


def test_cancellation_while_waiting_stops_the_tool_and_its_children():
    from labpipe.backup.proc import run_tool

    def handler(signum, frame):
        raise Cancelled()

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    try:
        with pytest.raises(Cancelled):  # a shell and its child: the whole process group goes
            run_tool(["sh", "-c", "sleep 61.25 & sleep 61.5; wait"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    time.sleep(0.5)
    left = [p for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [None])[-1] in ("61.25", "61.5")]
    assert not left


def test_timeout_stops_the_tool():
    from labpipe.backup.proc import run_tool
    from labpipe.errors import ToolError

    with pytest.raises(ToolError, match="did not finish within 1 s"):
        run_tool(["sleep", "61.75"], timeout=1)
    time.sleep(0.3)
    assert not [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", "61.75"]]


FORK_SCRIPT = """
import os, sys, threading, time
from labpipe.backup.proc import run_tool

marker = sys.argv[1]
# Python code that runs in a forked child before exec (a preexec_fn) would run this hook; in a threaded process
# that code can deadlock on a lock another thread held at the fork
os.register_at_fork(after_in_child=lambda: os.close(os.open(marker, os.O_CREAT | os.O_WRONLY, 0o600)))
busy = threading.Thread(target=lambda: [sum(range(1000)) for _ in iter(int, 1)], daemon=True)
busy.start()
result = run_tool(["sh", "-c", "echo started; kill -0 $PPID && echo has-parent"])
print(result.returncode, result.stdout.replace(chr(10), " "))
"""


def test_no_python_code_runs_in_the_forked_child(tmp_path):
    """Item 11: run_tool starts tools without a preexec_fn (new session by the C fork path, parent-death signal set
    by a small wrapper that is exec'd first), so no Python code runs between fork and exec."""
    marker = tmp_path / "python-ran-in-the-fork"
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK_SCRIPT), str(marker)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["0", "started", "has-parent"], result.stdout
    assert not marker.exists(), "Python code ran between fork and exec (preexec_fn)"
