"""Consistent dumps of the lab database, and restores, with the backend's own tools.

PostgreSQL: ``pg_dump -Fc`` (one snapshot, so consistent while workers write),
using the client bundled with the embedded server (16, which also dumps older
servers). MySQL/MariaDB: ``mysqldump --single-transaction``, streamed through gzip.

Dumps and restores stream (constant memory, whatever the database's size), are
written beside their final name and fsynced before the rename (``atomic_path``).
Passwords never go on a command line (``ps`` shows it to every account): PostgreSQL
clients get ``PGPASSWORD`` in their environment, MySQL clients a 0600 option file
(``--defaults-extra-file``) in a private temporary folder, removed afterwards.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
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


_CHUNK = 1 << 20


@contextlib.contextmanager
def _mysql_options(target: DatabaseTarget) -> Iterator[list[str]]:
    """The connection arguments of a MySQL client: host and user on the command line, the password in a 0600
    option file (``--defaults-extra-file``, which must come first) that is removed afterwards."""
    where = ["--socket", target.host] if target.host.startswith("/") else ["-h", target.host, "-P", str(target.port)]
    with tempfile.TemporaryDirectory(prefix="labpipe-mysql-") as folder:  # mode 0700
        options = Path(folder) / "client.cnf"
        fd = os.open(options, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        password = target.password.replace("\\", "\\\\").replace('"', '\\"')
        with os.fdopen(fd, "w") as handle:
            handle.write(f'[client]\npassword="{password}"\n' if target.password else "[client]\n")
        yield [f"--defaults-extra-file={options}", *where, "-u", target.user]


def _streamed(cmd: list[str], *, source=None, sink=None) -> None:
    """Run ``cmd`` feeding ``source`` (a binary file) to its stdin and/or copying its stdout into ``sink``, one
    chunk at a time; its stderr is kept for the error message."""
    try:
        process = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if source is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if sink is not None else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError as exc:
        raise ToolError(cmd[0], "program not found", "install the database client tools") from exc
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    feeder = None
    if source is not None:

        def feed() -> None:
            with contextlib.suppress(BrokenPipeError):  # the client stopped early: its exit code says why
                while block := source.read(_CHUNK):
                    process.stdin.write(block)
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
    try:
        if sink is not None:
            while block := process.stdout.read(_CHUNK):
                sink.write(block)
        if feeder is not None:
            feeder.join()
        process.wait()
    except BaseException:
        process.kill()
        process.wait()
        raise
    reader.join()
    if process.returncode != 0:
        stderr = b"".join(errors).decode(errors="replace")
        raise ToolError(Path(cmd[0]).name, f"exit {process.returncode}: {stderr.strip()[-1500:]}")


def run_client(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a database client tool; ``ToolError`` names it when it is missing or fails."""
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
            run_client(
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
            with _mysql_options(target) as connect, gzip.open(tmp, "wb") as out:
                _streamed([dumper, *connect, "--single-transaction", "--routines", "--databases", *schemas], sink=out)
    return final


def restore_dump(dump: Path, target: DatabaseTarget) -> None:
    """Load a dump into ``target`` (for PostgreSQL, its ``dbname``; it should be empty)."""
    dump = Path(dump)
    if not dump.exists():
        raise DatabaseError(dump, "dump file not found")
    if dump.name.endswith(".pgdump"):
        run_client(
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
        with _mysql_options(target) as connect, gzip.open(dump, "rb") as handle:
            _streamed([client, *connect], source=handle)


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
