"""The embedded PostgreSQL (pgserver) that serves DataJoint when no URL is configured.

It listens on a Unix socket inside its data folder only, so it never clashes
with a PostgreSQL server on the host, and it outlives the process that started
it: every worker process finds and reuses the same server.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path

from labpipe.db.target import DatabaseTarget
from labpipe.errors import DatabaseError

EMBEDDED_DBNAME = "labpipe"
log = logging.getLogger(__name__)


def _pgserver():
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import pgserver
            from pgserver._commands import POSTGRES_BIN_PATH
        except ImportError as exc:  # pragma: no cover - a dependency of labpipe
            raise DatabaseError(
                "pgserver", "the embedded PostgreSQL package is missing", "pip install pgserver"
            ) from exc
    return pgserver, POSTGRES_BIN_PATH


def postgres_bin(tool: str) -> Path:
    """Path of a PostgreSQL client program (pg_dump, psql, ...) bundled with pgserver."""
    return _pgserver()[1] / tool


class EmbeddedPostgres:
    """A PostgreSQL 16 server kept in ``pgdata`` and reached through its socket."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = Path(pgdata).resolve()

    def start(self) -> DatabaseTarget:
        """Start the server if it is not running (idempotent); returns how to reach it."""
        pgserver, _ = _pgserver()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        try:
            server = pgserver.get_server(self.pgdata, cleanup_mode=None)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            log_file = self.pgdata / "log"
            tail = log_file.read_text()[-2000:] if log_file.exists() else ""
            raise DatabaseError(self.pgdata, f"embedded PostgreSQL did not start: {tail}", "see the log file") from exc
        info = server.get_postmaster_info()
        target = DatabaseTarget(
            backend="postgresql", host=str(info.socket_dir), port=info.port or 5432, user="postgres", dbname="postgres"
        )
        self._ensure_database(target)
        return DatabaseTarget(**{**target.model_dump(), "dbname": EMBEDDED_DBNAME})

    def _ensure_database(self, admin: DatabaseTarget) -> None:
        import psycopg2

        conn = psycopg2.connect(**admin.psycopg2_kwargs())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (EMBEDDED_DBNAME,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{EMBEDDED_DBNAME}"')
        finally:
            conn.close()

    def is_running(self) -> bool:
        """Whether the server of this data folder runs (from postmaster.pid; pg_ctl refuses to run as root)."""
        _pgserver()
        from pgserver.utils import PostmasterInfo

        info = PostmasterInfo.read_from_pgdata(self.pgdata)
        return info is not None and info.is_running()

    def stop(self) -> bool:
        """Stop the server if it runs; returns whether it was running."""
        if not self.is_running():
            return False
        pgserver, _ = _pgserver()
        from pgserver._commands import pg_ctl

        user = "pgserver" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=user)
        return True
