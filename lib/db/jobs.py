"""Stuck and failed DataJoint jobs: listed for people, recovered by a schedule, cleared for retry.

A reserved job is stuck when the worker holding it is gone. The rule, in one place
(``labpipe ingest jobs``, ``labpipe pose jobs`` and the ``recover-jobs`` flow all call it):

- its database connection no longer exists (``pg_stat_activity`` / the processlist);
- PostgreSQL reuses backend pids, so a live backend with the job's ``connection_id`` only
  holds it if that backend started before the reservation (``backend_start``); MariaDB's
  connection ids are unique until the server restarts, so a reservation older than the
  server's start is stuck too;
- a worker that heartbeats (``worker_heartbeat``, which labpipe's populations run) and has
  not beaten for ``heartbeat_window_s`` is frozen or cut off even if its connection looks alive.

Failed jobs are those with ``status='error'``. Recovering deletes a stuck reservation (only
if it is still the same one) and queues the key again as pending.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import platform
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_S = 30.0
DEFAULT_HEARTBEAT_WINDOW_S = 300.0  # ten missed beats


@dataclass
class JobProblem:
    table: str
    key: dict
    status: str  # stuck | error
    host: str
    pid: int
    reserved_time: str
    message: str
    connection_id: int = 0

    def as_json(self) -> dict:
        return {**asdict(self), "key": {k: str(v) for k, v in self.key.items()}}


@dataclass
class _ServerView:
    """What the server says about connections, taken once per check (server clock, naive local time)."""

    now: dt.datetime
    live: dict[int, dt.datetime | None]  # connection id -> when it started (PostgreSQL) or None (MariaDB)
    server_started: dt.datetime | None = None  # MariaDB: connection ids restart with the server
    beats: dict[tuple[str, int, int], dt.datetime] = field(default_factory=dict)


def _backend(connection) -> str:
    return "postgresql" if connection.adapter.backend == "postgresql" else "mysql"


def live_connection_ids(connection) -> set[int]:
    return set(_server_view(connection, None).live)


def _server_view(connection, heartbeat_table: str | None) -> _ServerView:
    query = connection.query
    if _backend(connection) == "postgresql":
        now = query("SELECT LOCALTIMESTAMP(3)").fetchone()[0]
        rows = query("SELECT pid, backend_start::timestamp(3) FROM pg_stat_activity WHERE pid IS NOT NULL")
        view = _ServerView(now, {int(pid): started for pid, started in rows.fetchall()})
    else:
        now = query("SELECT NOW(3)").fetchone()[0]
        uptime = int(query("SHOW GLOBAL STATUS LIKE 'Uptime'").fetchone()[1])
        live = {int(row[0]): None for row in query("SELECT id FROM information_schema.processlist").fetchall()}
        view = _ServerView(now, live, server_started=now - dt.timedelta(seconds=uptime + 1))
    if heartbeat_table and _heartbeat_table_exists(connection, heartbeat_table):
        rows = query(f"SELECT host, pid, connection_id, beat_time FROM {_quoted(connection, heartbeat_table)}")
        view.beats = {(h, int(p), int(c)): beat for h, p, c, beat in rows.fetchall()}
    return view


def _stale_reason(row: dict, view: _ServerView, window_s: float | None) -> str | None:
    """Why a reservation is no longer held by a live worker, or None while it is."""
    cid = int(row.get("connection_id") or 0)
    reserved = row.get("reserved_time")
    if cid not in view.live:
        return f"its database connection {cid} is gone (the worker died)"
    started = view.live[cid]
    if started is not None and reserved is not None and started > reserved:
        return (
            f"connection {cid} now belongs to a backend started after the reservation ({started} > {reserved}): "
            "PostgreSQL reused the pid of the dead worker's connection"
        )
    if view.server_started is not None and reserved is not None and reserved < view.server_started:
        return f"the database server restarted after the reservation ({reserved}); connection {cid} is another one"
    beat = view.beats.get((row.get("host") or "", int(row.get("pid") or 0), cid))
    if beat is not None and window_s and (view.now - beat).total_seconds() > window_s:
        age = (view.now - beat).total_seconds()
        return f"no heartbeat for {age:.0f} s (window {window_s:.0f} s): the worker is frozen or cut off"
    return None


def _table_name(table) -> str:
    return table.__name__ if isinstance(table, type) else type(table).__name__


def _heartbeat_table_for(table) -> str:
    """``<prefix>_workers.heartbeat`` beside the table's ``<prefix>_<lifecycle>`` schema."""
    return f"{table.database.rsplit('_', 1)[0]}_workers.heartbeat"


def _problems(table, window_s: float | None) -> list[tuple[JobProblem, dict]]:
    view = _server_view(table.connection, _heartbeat_table_for(table))
    key_names = table.jobs.primary_key
    found = []
    for row in (table.jobs & "status in ('reserved', 'error')").to_dicts():
        if row["status"] == "reserved":
            reason = _stale_reason(row, view, window_s)
            if reason is None:
                continue  # a live worker holds it
        else:
            reason = row.get("error_message") or "failed"
        problem = JobProblem(
            table=_table_name(table),
            key={k: row[k] for k in key_names},
            status="stuck" if row["status"] == "reserved" else "error",
            host=row.get("host") or "",
            pid=int(row.get("pid") or 0),
            reserved_time=str(row.get("reserved_time") or ""),
            message=reason[:500],
            connection_id=int(row.get("connection_id") or 0),
        )
        found.append((problem, row))
    return found


def job_problems(
    populated_tables, *, heartbeat_window_s: float | None = DEFAULT_HEARTBEAT_WINDOW_S
) -> list[JobProblem]:
    """Stuck (reserved by a worker that is gone) and errored jobs of the given computed tables."""
    return [problem for table in populated_tables for problem, _ in _problems(table, heartbeat_window_s)]


def _release(table, problem: JobProblem, row: dict) -> bool:
    """Delete the stuck reservation if it is still the same one, then queue its key again."""
    same = {
        **problem.key,
        "status": "reserved",
        "connection_id": row["connection_id"],
        "pid": row["pid"],
        "host": row["host"],
    }
    if not (table.jobs & same).delete_quick(get_count=True):
        return False  # completed, failed or re-reserved meanwhile
    table.jobs.refresh(problem.key)
    return True


def recover_reserved_jobs(
    populated_tables, *, heartbeat_window_s: float | None = DEFAULT_HEARTBEAT_WINDOW_S
) -> list[JobProblem]:
    """Release every stuck reservation of the given tables so another worker takes the key; returns them."""
    cleared = []
    for table in populated_tables:
        for problem, row in _problems(table, heartbeat_window_s):
            if problem.status == "stuck" and _release(table, problem, row):
                cleared.append(problem)
    return cleared


def clear_jobs(populated_tables, *, include_errors: bool = True) -> int:
    """Release stuck reservations and (by default) delete errored jobs so the keys are retried; returns how many."""
    cleared = len(recover_reserved_jobs(populated_tables))
    if include_errors:
        for table in populated_tables:
            for problem, _ in _problems(table, None):
                if problem.status == "error":
                    (table.jobs & problem.key & "status = 'error'").delete_quick()
                    cleared += 1
    return cleared


# --- heartbeats ------------------------------------------------------------------------------------------------


def _quoted(connection, dotted: str) -> str:
    quote = '"' if _backend(connection) == "postgresql" else "`"
    return ".".join(f"{quote}{part}{quote}" for part in dotted.split("."))


def _heartbeat_table_exists(connection, dotted: str) -> bool:
    schema, name = dotted.split(".")
    sql = "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s AND table_name = %s"
    return bool(connection.query(sql, args=(schema, name)).fetchone()[0])


def _declare_heartbeat_table(db, dotted: str) -> None:
    schema, _ = dotted.split(".")
    conn = db.connection
    postgres = _backend(conn) == "postgresql"
    with db.server_lock(f"declare {dotted}"):
        if _heartbeat_table_exists(conn, dotted):
            return
        conn.query(f"CREATE SCHEMA IF NOT EXISTS {_quoted(conn, schema)}")
        stamp = "timestamp(3)" if postgres else "datetime(3)"
        conn.query(
            f"CREATE TABLE IF NOT EXISTS {_quoted(conn, dotted)} (host varchar(255) NOT NULL, pid integer NOT NULL, "
            f"connection_id bigint NOT NULL, beat_time {stamp} NOT NULL, PRIMARY KEY (host, pid, connection_id))"
        )


def _raw_connection(target):
    if target.backend == "postgresql":
        import psycopg2

        conn = psycopg2.connect(**target.psycopg2_kwargs())
        conn.autocommit = True
        return conn
    import pymysql

    return pymysql.connect(autocommit=True, **target.pymysql_kwargs())


@contextlib.contextmanager
def worker_heartbeat(db, *, every_s: float = DEFAULT_HEARTBEAT_S) -> Iterator[None]:
    """Beat every ``every_s`` for this worker's DataJoint connection while the block runs.

    The beat comes from a thread on a connection of its own, independent of progress, so a long
    ``make`` keeps its reservation; a process that is frozen or cut off stops beating and
    ``recover_reserved_jobs`` releases its jobs after the window. Heartbeat trouble is logged,
    never raised: it must not stop the work.
    """
    dotted = f"{db.schema_name('workers')}.heartbeat"
    conn = db.connection
    _declare_heartbeat_table(db, dotted)
    identity = (platform.node(), os.getpid(), int(conn.connection_id))
    table = _quoted(conn, dotted)
    if _backend(conn) == "postgresql":
        upsert = (
            f"INSERT INTO {table} VALUES (%s, %s, %s, LOCALTIMESTAMP(3)) "
            "ON CONFLICT (host, pid, connection_id) DO UPDATE SET beat_time = EXCLUDED.beat_time"
        )
    else:
        upsert = f"INSERT INTO {table} VALUES (%s, %s, %s, NOW(3)) ON DUPLICATE KEY UPDATE beat_time = NOW(3)"
    stop = threading.Event()

    def beat() -> None:
        raw = None
        while True:
            try:
                raw = raw or _raw_connection(db.target)
                with raw.cursor() as cursor:
                    cursor.execute(upsert, identity)
            except Exception as exc:  # the database may be restarting: try again next beat
                log.warning("worker heartbeat failed: %s", exc)
                with contextlib.suppress(Exception):
                    raw.close()
                raw = None
            if stop.wait(every_s):
                break
        with contextlib.suppress(Exception):
            raw = raw or _raw_connection(db.target)
            with raw.cursor() as cursor:
                cursor.execute(f"DELETE FROM {table} WHERE host = %s AND pid = %s AND connection_id = %s", identity)
            raw.close()

    thread = threading.Thread(target=beat, name="labpipe-worker-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
