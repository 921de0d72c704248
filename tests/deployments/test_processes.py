"""Processes `labpipe up` starts and `labpipe down` stops: real process groups."""

import os
import time

from labpipe.deployments.processes import ManagedProcess, group_members


def test_stop_returns_once_the_whole_group_is_gone_even_when_it_ignores_sigterm(tmp_path):
    """A worker whose flow-run children ignore SIGTERM: `stop` kills the group and waits until none is left."""
    process = ManagedProcess("stubborn", tmp_path / "run", tmp_path / "logs")
    env = {"PATH": os.environ["PATH"]}
    pid = process.start(["sh", "-c", "trap '' TERM; sleep 300 & sleep 300 & wait"], env=env)
    deadline = time.monotonic() + 30
    while len(group_members(pid)) < 3 and time.monotonic() < deadline:  # the shell and its two children
        time.sleep(0.05)
    assert len(group_members(pid)) == 3

    began = time.monotonic()
    assert process.stop(timeout=1.0) is True
    assert time.monotonic() - began >= 1.0  # SIGTERM was ignored: it waited, then killed
    assert group_members(pid) == [] and not process.pid_file.exists()
    assert process.stop() is False  # nothing left to stop


def test_stop_also_ends_children_in_sessions_of_their_own(tmp_path):
    """Prefect's worker starts flow runs with start_new_session: `labpipe down` must not leave them orphaned."""
    process = ManagedProcess("worker", tmp_path / "run", tmp_path / "logs")
    marker = tmp_path / "run-pid"
    run = (
        "import subprocess, sys, time; "
        "child = subprocess.Popen(['sh', '-c', 'trap \\'\\' TERM; sleep 300 & wait'], start_new_session=True); "
        f"open({str(marker)!r}, 'w').write(str(child.pid)); time.sleep(300)"
    )
    pid = process.start([os.environ.get("PYTHON", "python3"), "-c", run], env={"PATH": os.environ["PATH"]})
    deadline = time.monotonic() + 30
    while not (marker.exists() and marker.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    run_pid = int(marker.read_text())
    assert run_pid not in group_members(pid)  # outside the worker's group, as a flow run is
    assert len(group_members(run_pid)) == 2  # the run's shell and its sleep

    assert process.stop(timeout=1.0) is True
    assert group_members(pid) == [] and group_members(run_pid) == []
