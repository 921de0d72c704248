"""Database dump hooks: consistent dumps of every database labpipe depends on, and their retention.

- the lab database: ``labpipe.db.connect.dump_lab_database`` (pg_dump -Fc / mysqldump --single-transaction);
- the Prefect server's database: SQLite through sqlite3's online backup API (a consistent copy while the
  server writes), or ``pg_dump`` when it is PostgreSQL;
- other state databases (SQLite files, e.g. DSA-110's ``state/*.sqlite3``), the same way.

Dumps are named ``<backend>-<label>-<YYYYmmddTHHMMSS>.<ext>`` in the dumps root. Old dumps are
removed only once a backup holds them and its restore proof passed (``prune_dumps``).
"""

from __future__ import annotations

import datetime as dt
import glob
import gzip
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from labpipe.db.dump import dump_database
from labpipe.db.target import DatabaseTarget
from labpipe.errors import DatabaseError, InvalidInput
from labpipe.files import atomic_path, sha256_file

DUMP_NAME = re.compile(r"^(?P<key>.+)-(?P<stamp>\d{8}T\d{6})\.(?P<ext>pgdump|sql\.gz|sqlite3)$")


@dataclass
class DumpResult:
    """One database dumped (or not: ``error`` says why)."""

    database: str
    path: Path | None
    bytes: int = 0
    sha256: str = ""
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.path is not None and not self.error


def _stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%dT%H%M%S")


def timed_dump(label: str, make: Callable[[], Path]) -> DumpResult:
    """Run one dump hook; a failure is recorded, not raised, so the other databases are still dumped."""
    started = time.monotonic()
    try:
        path = make()
    except Exception as exc:  # every hook's failure is reported with the database it concerns
        return DumpResult(label, None, seconds=time.monotonic() - started, error=f"{type(exc).__name__}: {exc}")
    return DumpResult(label, path, path.stat().st_size, sha256_file(path), time.monotonic() - started)


def dump_sqlite(source: Path, dumps_root: Path, label: str) -> Path:
    """A consistent copy of a live SQLite database (online backup API), checked with integrity_check."""
    source = Path(source)
    if not source.is_file():
        raise InvalidInput(source, "SQLite database not found", "check the dump settings' sqlite_databases")
    final = Path(dumps_root) / f"sqlite-{label}-{_stamp()}.sqlite3"
    with atomic_path(final) as tmp:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst)  # one step: a read transaction spans the whole copy, so it is one snapshot
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(source, f"not a readable SQLite database: {exc}") from exc
        finally:
            src.close()
            dst.close()
        check_sqlite(tmp)
    return final


def check_sqlite(path: Path) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        verdict = conn.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(path, f"not a SQLite database: {exc}") from exc
    finally:
        conn.close()
    if verdict != "ok":
        raise DatabaseError(path, f"SQLite integrity_check: {verdict}")


def _sqlalchemy_to_target(url: str) -> DatabaseTarget:
    scheme, rest = url.split("://", 1)
    return DatabaseTarget.from_url(scheme.split("+")[0] + "://" + rest)


def dump_url_database(url: str, dumps_root: Path, label: str) -> Path:
    """Dump a database given by a SQLAlchemy-style URL (sqlite:///file or postgresql+asyncpg://...)."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1].split("?", 1)[0]
        if not path or path == ":memory:":
            raise InvalidInput(url, "an in-memory SQLite database cannot be dumped")
        return dump_sqlite(Path(path), dumps_root, label)
    target = _sqlalchemy_to_target(url)
    if target.backend != "postgresql":
        raise InvalidInput(target.url, "only SQLite and PostgreSQL state databases are supported")
    return dump_database(target, ["public"], dumps_root, label)


def sqlite_state_databases(patterns: list[str]) -> list[Path]:
    """The SQLite files that the configured patterns name (each pattern a path or a glob)."""
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        found += [Path(m) for m in matches]
    return found


def state_label(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", Path(path).stem)


def verify_dump(path: Path) -> None:
    """Read a dump through to its end with its own format's reader (used on restored copies)."""
    path = Path(path)
    if path.name.endswith(".sqlite3"):
        check_sqlite(path)
    elif path.name.endswith(".sql.gz"):
        with gzip.open(path, "rb") as handle:
            while handle.read(1 << 20):
                pass
    elif path.name.endswith(".pgdump"):
        from labpipe.db.dump import run_client
        from labpipe.db.embedded import postgres_bin

        run_client([str(postgres_bin("pg_restore")), "--list", str(path)])  # reads the archive's table of contents


def prune_dumps(
    dumps_root: Path,
    *,
    keep_days: int,
    keep_last: int,
    backed_up: Callable[[str], bool],
    now: dt.datetime | None = None,
) -> list[Path]:
    """Delete dumps older than ``keep_days``, keeping the newest ``keep_last`` of each database and any dump
    that no proven backup holds yet (``backed_up(name)`` false); returns what was deleted."""
    now = now or dt.datetime.now()
    groups: dict[str, list[tuple[dt.datetime, Path]]] = {}
    for path in Path(dumps_root).glob("*"):
        match = DUMP_NAME.match(path.name)
        if match and path.is_file():
            stamp = dt.datetime.strptime(match.group("stamp"), "%Y%m%dT%H%M%S")
            groups.setdefault(match.group("key"), []).append((stamp, path))
    deleted = []
    for entries in groups.values():
        entries.sort(reverse=True)
        for stamp, path in entries[keep_last:]:
            if now - stamp > dt.timedelta(days=keep_days) and backed_up(path.name):
                path.unlink()
                deleted.append(path)
    return sorted(deleted)
