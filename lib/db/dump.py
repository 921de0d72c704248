"""Consistent dumps of the lab database, and restores, with the backend's own tools.

PostgreSQL: ``pg_dump -Fc`` (one snapshot, so consistent while workers write),
using the client bundled with the embedded server (16, which also dumps older
servers). MySQL/MariaDB: ``mysqldump --single-transaction``, gzipped.
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
import shutil
import subprocess
from pathlib import Path

from labpipe.db.embedded import postgres_bin
from labpipe.db.target import DatabaseTarget
from labpipe.errors import DatabaseError, ToolError
from labpipe.files import atomic_path


def _pg_env(target: DatabaseTarget) -> dict:
    return {
        **os.environ,
        "PGPASSWORD": target.password,
        "PGSSLMODE": "disable" if target.host.startswith("/") else "prefer",
    }


def _pg_args(target: DatabaseTarget) -> list[str]:
    return ["-h", target.host, "-p", str(target.port), "-U", target.user]


def _mysql_args(target: DatabaseTarget) -> list[str]:
    where = ["--socket", target.host] if target.host.startswith("/") else ["-h", target.host, "-P", str(target.port)]
    return [*where, "-u", target.user] + ([f"--password={target.password}"] if target.password else [])


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(cmd, capture_output=True, **kwargs)
    except FileNotFoundError as exc:
        raise ToolError(cmd[0], "program not found", "install the database client tools") from exc
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace") if isinstance(result.stderr, bytes) else result.stderr
        raise ToolError(Path(cmd[0]).name, f"exit {result.returncode}: {stderr.strip()[-1500:]}")
    return result


def dump_name(target: DatabaseTarget, prefix: str, when: dt.datetime | None = None) -> str:
    stamp = (when or dt.datetime.now()).strftime("%Y%m%dT%H%M%S")
    suffix = "pgdump" if target.backend == "postgresql" else "sql.gz"
    return f"{target.backend}-{prefix}-{stamp}.{suffix}"


def dump_database(target: DatabaseTarget, schemas: list[str], dumps_root: Path, prefix: str) -> Path:
    """Write one consistent dump of ``schemas`` into ``dumps_root``; returns its path."""
    if not schemas:
        raise DatabaseError(target.url, f"no schemas with prefix {prefix!r} to dump", "run ingest first")
    final = Path(dumps_root) / dump_name(target, prefix)
    with atomic_path(final) as tmp:
        if target.backend == "postgresql":
            schema_args = [arg for name in schemas for arg in ("-n", name)]
            _run(
                [
                    str(postgres_bin("pg_dump")),
                    "-Fc",
                    *_pg_args(target),
                    *schema_args,
                    "-f",
                    str(tmp),
                    target.dbname or "postgres",
                ],
                env=_pg_env(target),
            )
        else:
            dumper = shutil.which("mysqldump") or shutil.which("mariadb-dump") or "mysqldump"
            result = _run([dumper, *_mysql_args(target), "--single-transaction", "--routines", "--databases", *schemas])
            with gzip.open(tmp, "wb") as out:
                out.write(result.stdout)
    return final


def restore_dump(dump: Path, target: DatabaseTarget) -> None:
    """Load a dump into ``target`` (for PostgreSQL, its ``dbname``; it should be empty)."""
    dump = Path(dump)
    if not dump.exists():
        raise DatabaseError(dump, "dump file not found")
    if dump.name.endswith(".pgdump"):
        _run(
            [
                str(postgres_bin("pg_restore")),
                *_pg_args(target),
                "--no-owner",
                "--exit-on-error",
                "-d",
                target.dbname or "postgres",
                str(dump),
            ],
            env=_pg_env(target),
        )
    else:
        client = shutil.which("mysql") or shutil.which("mariadb") or "mysql"
        with gzip.open(dump, "rb") as handle:
            _run([client, *_mysql_args(target)], input=handle.read())


def create_empty_database(admin: DatabaseTarget, name: str) -> DatabaseTarget:
    """A new, empty PostgreSQL database beside ``admin.dbname`` (restore checks use it)."""
    import psycopg2

    conn = psycopg2.connect(**admin.psycopg2_kwargs())
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return admin.with_dbname(name)
