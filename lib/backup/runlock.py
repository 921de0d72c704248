"""One backup-lifecycle writer at a time on a backups root (pull, create, prune, compact, retention).

An ``flock`` on ``<backups>/.labpipe-backup.lock``: the kernel drops it when
the holder dies, so it can never go stale; the holder's pid and purpose are
written into the file for the message a second run gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from labpipe.backup.errors import RepositoryLocked


@contextlib.contextmanager
def backup_lock(backups_root: Path, purpose: str, *, wait: float = 0.0) -> Iterator[None]:
    """Hold the lifecycle lock; ``RepositoryLocked`` names the holder if it is not free within ``wait`` s."""
    path = Path(backups_root) / ".labpipe-backup.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise RepositoryLocked(
                        path.parent,
                        f"a backup job is already running ({holder})",
                        "wait for it to finish; the lock goes when that process ends",
                    ) from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}: {purpose}\n")
        handle.flush()
        yield  # closing the file releases the lock
