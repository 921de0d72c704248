"""What labpipe remembers about its borg repositories, kept under ``$LABPIPE_HOME/state`` (not on the backup disk).

For each repository location: borg's repository id (recorded by ``labpipe backup init``, or when labpipe first
opens a repository made before it kept this record) and the last failed ``borg check``, until a check passes.
A repository labpipe knows that is missing, or that now holds another id, is refused: that is a backup disk
that is not mounted, or another disk in its place, and copying it off-site would replace the good copy.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from labpipe.files import atomic_write_text


def location_key(location: str) -> str:
    """The record's key: an absolute path for a local repository, the URL as written otherwise."""
    if "://" in location or (":" in location.split("/", 1)[0]):
        return location
    return os.path.abspath(location)


class RepositoryState:
    """The JSON record of known repositories: ``{location: {id, recorded, check_failed}}``."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / "state" / "backup" / "repositories.json"

    @contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.path.with_suffix(".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}

    def _update(self, location: str, **fields) -> dict:
        with self._locked():
            data = self._read()
            entry = {**data.get(location_key(location), {}), **fields}
            data[location_key(location)] = {k: v for k, v in entry.items() if v is not None}
            atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
            return data[location_key(location)]

    def known(self, location: str) -> dict | None:
        return self._read().get(location_key(location))

    def remember(self, location: str, repository_id: str, how: str) -> dict:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return self._update(location, id=repository_id, recorded=now, recorded_by=how)

    def record_check(
        self, location: str, ok: bool, what: str, problems: list[str], *, verify_data: bool = False
    ) -> dict:
        """A failed check is kept (with the time of the first failure) until a check passes."""
        if ok:
            return self._update(location, check_failed=None)
        previous = (self.known(location) or {}).get("check_failed") or {}
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        failed = {
            "since": previous.get("since", now),
            "last": now,
            "what": what,
            "problems": problems[:10],
            "verify_data": verify_data or bool(previous.get("verify_data")),
        }
        return self._update(location, check_failed=failed)

    def check_failure(self, location: str) -> dict | None:
        return (self.known(location) or {}).get("check_failed")
