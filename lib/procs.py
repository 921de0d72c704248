"""Processes on this host: is a recorded pid still a live process?"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def pid_alive(pid: int) -> bool:
    """True while ``pid`` is a running process on this host.

    A zombie (killed, not yet reaped by its parent) counts as dead; a process owned by another user
    (``PermissionError``) and a /proc entry that cannot be read count as alive, so that a lock held by
    a live process is never broken on a guess.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        return True


def wait_until(condition: Callable[[], T], timeout: float, interval: float = 0.2) -> T | None:
    """Poll ``condition()`` until it returns something true (returned) or ``timeout`` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)
