import os
import subprocess
import sys
import time

from labpipe.procs import pid_alive


def test_a_running_process_is_alive_and_an_exited_one_is_not():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert pid_alive(child.pid)
    finally:
        child.kill()
    # killed but not yet reaped: a zombie, which counts as dead
    deadline = time.monotonic() + 10
    while pid_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid)


def test_this_process_is_alive_and_nonsense_pids_are_not():
    assert pid_alive(os.getpid())
    assert not pid_alive(0) and not pid_alive(-5)
