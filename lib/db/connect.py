"""Open the lab database for DataJoint, with the blob root as its object store."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from labpipe.config import Settings, get_settings
from labpipe.db.declare import complete_declarations
from labpipe.db.embedded import EmbeddedPostgres
from labpipe.db.settings import DatabaseSettings
from labpipe.db.target import DatabaseTarget
from labpipe.errors import DatabaseError
from labpipe.layout import Layout

BLOB_STORE = "blobs"
_lock = threading.Lock()
_open: dict[tuple, LabDatabase] = {}


def datajoint_module():
    """The ``datajoint`` package, quiet (warnings silenced, connection chatter kept off stdout)."""
    # every dj.Instance re-applies its config's log level; keep connection chatter out of stdout (CLI JSON)
    os.environ.setdefault("DJ_LOG_LEVEL", "WARNING")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import datajoint as dj
    logging.getLogger("datajoint").setLevel(logging.WARNING)
    return dj


class LabDatabase:
    """A DataJoint connection to one server, with labpipe's schema prefix and object store.

    Each lifecycle declares its tables with ``db.schema("<lifecycle>")``; table
    classes are built per database (see ``labpipe.ingest.schema.tables``), so one
    process can talk to several servers, as the tests do.
    """

    def __init__(self, target: DatabaseTarget, blobs: Path, prefix: str) -> None:
        dj = datajoint_module()
        self.target, self.blobs, self.prefix = target, Path(blobs), prefix
        self.blobs.mkdir(parents=True, exist_ok=True)
        extra = {"database__name": target.dbname} if target.backend == "postgresql" and target.dbname else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                self.instance = dj.Instance(
                    host=target.host,
                    user=target.user,
                    password=target.password,
                    port=target.port,
                    use_tls=False if target.host.startswith("/") or target.host == "127.0.0.1" else None,
                    backend=target.backend,
                    **extra,
                )
            except Exception as exc:
                raise DatabaseError(target.url, f"cannot connect: {exc}", "check LABPIPE_DATABASE_URL") from exc
        self.instance.config.safemode = False
        self.instance.config.stores = {BLOB_STORE: {"protocol": "file", "location": str(self.blobs)}}
        self._schemas: dict[str, object] = {}
        self._tables: dict[str, object] = {}

    @property
    def connection(self):
        return self.instance.connection

    def schema_name(self, lifecycle: str) -> str:
        return f"{self.prefix}_{lifecycle}"

    def schema(self, lifecycle: str):
        """The DataJoint schema of one lifecycle (created on first use)."""
        if lifecycle not in self._schemas:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._schemas[lifecycle] = self.instance.Schema(self.schema_name(lifecycle))
        return self._schemas[lifecycle]

    def tables(self, lifecycle: str, build):
        """Table classes of one lifecycle on this database, built once by ``build(schema)``.

        Declaring (tables and their jobs tables) happens under a server-side lock:
        PostgreSQL's CREATE TABLE races between two workers starting at once
        (duplicate key in pg_type), so declarations are serialised across processes.
        Under the same lock, what a killed declarer left undone is finished
        (``labpipe.db.declare``: a table without its column comments has lost its types).
        """
        if lifecycle not in self._tables:
            with self.server_lock(f"declare {self.schema_name(lifecycle)}"):
                namespace = build(self.schema(lifecycle))
                for table in vars(namespace).values():
                    if isinstance(table, type) and hasattr(table, "populate"):
                        table.jobs  # noqa: B018 - accessing it declares the jobs table
                for name in complete_declarations(self, self.schema_name(lifecycle), namespace):
                    logging.getLogger(__name__).warning("finished the declaration of %s (a declarer died)", name)
            self._tables[lifecycle] = namespace
        return self._tables[lifecycle]

    @contextlib.contextmanager
    def server_lock(self, name: str, timeout: int = 300) -> Iterator[None]:
        """A lock held on the database server (advisory lock / GET_LOCK), across processes and hosts."""
        conn = self.connection
        if self.target.backend == "postgresql":
            conn.query("SELECT pg_advisory_lock(hashtext(%s))", args=(name,))
            try:
                yield
            finally:
                conn.query("SELECT pg_advisory_unlock(hashtext(%s))", args=(name,))
        else:
            got = conn.query("SELECT GET_LOCK(%s, %s)", args=(name[:64], timeout)).fetchone()[0]
            if got != 1:
                raise DatabaseError(self.target.url, f"could not take the server lock {name!r} in {timeout} s")
            try:
                yield
            finally:
                conn.query("SELECT RELEASE_LOCK(%s)", args=(name[:64],))

    def existing_schemas(self) -> list[str]:
        """Names of the schemas on the server that carry this database's prefix."""
        sql = "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %s"
        rows = self.connection.query(sql, args=(self.prefix.replace("_", "\\_") + "\\_%",)).fetchall()
        return sorted(row[0] for row in rows)

    def drop_all(self) -> None:
        """Drop every schema with this prefix (tests and `labpipe down --purge`)."""
        quote = '"' if self.target.backend == "postgresql" else "`"
        suffix = " CASCADE" if self.target.backend == "postgresql" else ""
        for name in self.existing_schemas():
            self.connection.query(f"DROP SCHEMA IF EXISTS {quote}{name}{quote}{suffix}")
        self._schemas.clear()
        self._tables.clear()


def resolve_target(config: DatabaseSettings | None = None, settings: Settings | None = None) -> DatabaseTarget:
    """The configured server (block, then ``LABPIPE_DATABASE_URL``), or the embedded PostgreSQL."""
    settings = settings or get_settings()
    url = config.url if config and config.url else settings.database_url
    if url is not None:
        return DatabaseTarget.from_url(url.get_secret_value())
    return EmbeddedPostgres(settings.home / "pg").start()


def open_lab_database(
    config: DatabaseSettings | None = None,
    *,
    target: DatabaseTarget | None = None,
    blobs: Path | None = None,
    settings: Settings | None = None,
) -> LabDatabase:
    """The lab database for this process (one connection per server, prefix and blob root)."""
    settings = settings or get_settings()
    target = target or resolve_target(config, settings)
    blobs = Path(blobs) if blobs else Layout.default(settings.home).blobs
    prefix = config.schema_prefix if config else settings.schema_prefix
    key = (target.url, target.password, str(blobs), prefix)
    with _lock:
        if key not in _open:
            _open[key] = LabDatabase(target, blobs, prefix)
        return _open[key]


def dump_lab_database(db: LabDatabase, dumps_root: Path) -> Path:
    """One consistent dump of every schema with ``db``'s prefix, into ``dumps_root``."""
    from labpipe.db.dump import dump_database

    return dump_database(db.target, db.existing_schemas(), dumps_root, db.prefix)
