"""Stuck and failed DataJoint jobs: listed for people, cleared for retry.

A job is stuck when it is ``reserved`` by a database connection that no longer
exists (its worker died); this is exact on both backends, unlike a timeout.
Failed jobs are those with ``status='error'``. Clearing deletes the job rows, so
the next ``populate(reserve_jobs=True)`` picks the keys up again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class JobProblem:
    table: str
    key: dict
    status: str  # stuck | error
    host: str
    pid: int
    reserved_time: str
    message: str

    def as_json(self) -> dict:
        return {**asdict(self), "key": {k: str(v) for k, v in self.key.items()}}


def live_connection_ids(connection) -> set[int]:
    if connection.adapter.backend == "postgresql":
        sql = "SELECT pid FROM pg_stat_activity"
    else:
        sql = "SELECT id FROM information_schema.processlist"
    return {int(row[0]) for row in connection.query(sql).fetchall()}


def _job_rows(table) -> list[dict]:
    jobs = table.jobs
    return (jobs & "status in ('reserved', 'error')").to_dicts()


def job_problems(populated_tables) -> list[JobProblem]:
    """Stuck (reserved by a dead connection) and errored jobs of the given computed tables."""
    problems = []
    for table in populated_tables:
        live = live_connection_ids(table.connection)
        key_names = table.primary_key
        for row in _job_rows(table):
            if row["status"] == "reserved" and int(row.get("connection_id") or 0) in live:
                continue  # a live worker holds it
            problems.append(
                JobProblem(
                    table=table.__name__ if isinstance(table, type) else type(table).__name__,
                    key={k: row[k] for k in key_names},
                    status="stuck" if row["status"] == "reserved" else "error",
                    host=row.get("host") or "",
                    pid=int(row.get("pid") or 0),
                    reserved_time=str(row.get("reserved_time") or ""),
                    message=(row.get("error_message") or "reserved by a worker that is gone")[:500],
                )
            )
    return problems


def clear_jobs(populated_tables, *, include_errors: bool = True) -> int:
    """Delete stuck (and, by default, errored) job rows so the keys are retried; returns how many."""
    cleared = 0
    tables_by_name = {(t.__name__ if isinstance(t, type) else type(t).__name__): t for t in populated_tables}
    for problem in job_problems(populated_tables):
        if problem.status == "error" and not include_errors:
            continue
        jobs = tables_by_name[problem.table].jobs
        (jobs & problem.key).delete_quick()
        cleared += 1
    return cleared
