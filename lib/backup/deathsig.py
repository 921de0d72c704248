"""Run as a program in place of a tool: arm the parent-death signal, then become the tool (``exec``).

``python -I -S deathsig.py PARENT_PID SIGNAL PROGRAM ARG...``. ``run_tool`` starts tools through this instead of
a ``preexec_fn``: no Python code then runs between fork and exec in the (threaded) flow process, where it could
deadlock on a lock another thread held at the fork. This process is new and single-threaded, so calling
``prctl`` here is safe; the setting survives the ``exec`` (tools are not set-uid). If the parent died before the
signal was armed (``getppid`` changed), the tool is not started at all.
"""

from __future__ import annotations

import ctypes
import os
import sys

_PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    parent, signal_number, command = int(argv[1]), int(argv[2]), argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal_number, 0, 0, 0) != 0:
        sys.stderr.write(f"labpipe: prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}\n")
        return 126
    if os.getppid() != parent:  # the run ended while this was starting: do not start an orphan
        return 125
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"labpipe: cannot run {command[0]}: {exc}\n")
        return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv))
