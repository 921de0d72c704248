"""Ingest lifecycle flows (ADAMACS): consolidate -> scan share -> insert -> populate, and DB dumps.

Deployments (deployments/prefect.yaml): ``ingest`` every 5 minutes on the cpu
pool, ``populate/mocap`` on the cpu pool (start several runs to get several
workers), ``recover-jobs`` every 5 minutes (reservations of dead or frozen workers go back to the
queue), ``dump-database``. The imaging populations are in flows/imaging.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from labpipe.blocks import database_settings, lab_database, layout
from labpipe.blocks.imaging import rspace_settings
from labpipe.db.connect import dump_lab_database, open_lab_database
from labpipe.db.jobs import DEFAULT_HEARTBEAT_WINDOW_S, recover_reserved_jobs
from labpipe.db.settings import DatabaseSettings
from labpipe.errors import LabpipeError, RunFailed
from labpipe.flows.common import Progress, logger, markdown_table, publish_markdown
from labpipe.ingest.consolidate import DEFAULT_MIN_AGE_S, ConsolidationReport, consolidate
from labpipe.ingest.populate import every_population_table, run_population
from labpipe.ingest.run import IngestReport, ingest_share
from labpipe.layout import Layout
from prefect import flow, task
from prefect.events import emit_event


def _share_label() -> str:
    from prefect.runtime import flow_run

    share = flow_run.parameters.get("share")
    return Path(share).name if share else "share"


@task(name="consolidate-staging", task_run_name="consolidate-{staging.name}")
def consolidate_staging(staging: Path, share: Path, min_age_s: float) -> ConsolidationReport:
    report = consolidate(staging, share, min_age_s=min_age_s)
    for problem in report.rejected:
        logger().warning("not consolidated: %s: %s", problem.path, problem.reason)
    if report.waiting:
        logger().info("%d staged files still being written; they move on a later run", len(report.waiting))
    return report


@task(name="insert-share", task_run_name="insert-{share.name}", retries=2, retry_delay_seconds=10)
def insert_share(share: Path, db: DatabaseSettings, roots: Layout) -> IngestReport:
    return ingest_share(
        open_lab_database(db, blobs=roots.blobs), share, progress=Progress("sessions parsed and inserted", every=2.0)
    )


@task(name="post-to-notebooks", task_run_name="post-to-notebooks")
def post_to_notebooks(report: IngestReport, settings) -> str:
    """Append each inserted session's summary to its user's RSpace entry; the markdown of what was posted.

    A failure is a warning and a line in the summary, never a failed ingest: the data are in the database.
    """
    from labpipe.records.rspace import post_summary, summaries_of

    if settings is None or not report.sessions:
        return ""
    rows = []
    for summary in summaries_of(report):
        try:
            document = post_summary(settings, summary)
        except LabpipeError as exc:
            logger().warning("RSpace summary of %s not posted: %s", summary.session_id, exc)
            rows.append({"session": summary.session_id, "user": summary.username, "entry": "", "posted": str(exc)})
            continue
        if document:
            rows.append({"session": summary.session_id, "user": summary.username, "entry": document, "posted": "yes"})
    return "\n## RSpace notebook entries\n" + markdown_table(rows, ["session", "user", "entry", "posted"])


def _ingest_summary(report: IngestReport, consolidation: ConsolidationReport | None) -> str:
    lines = [
        f"# Ingest run `{report.run_id}`: **{report.status}**",
        f"Share `{report.share_root}`: {report.inserted} sessions inserted, {report.updated} updated, "
        f"{report.skipped} already ingested; {report.files_inserted} files; tasks {report.tasks_inserted or '{}'}.",
    ]
    if consolidation is not None:
        lines.append(
            f"Consolidated {len(consolidation.moved)} files from staging; {len(consolidation.waiting)} still being "
            f"written wait for a later run."
        )
    problems = report.rejected + report.failures
    if consolidation is not None:
        problems += [{"path": p.path, "reason": p.reason} for p in consolidation.rejected]
    lines.append(f"\n## Rejected or failed ({len(problems)})\n")
    lines.append(markdown_table(problems, ["path", "reason"]))
    return "\n".join(lines)


@flow(name="ingest", flow_run_name=lambda: f"ingest-{_share_label()}", log_prints=True)
def ingest(
    share: str | None = None,
    consolidate_first: bool = True,
    min_age_s: float = DEFAULT_MIN_AGE_S,
    layout_block: str | None = "default",
    db_block: str | None = "default",
    rspace_block: str | None = "default",
) -> dict:
    """Consolidate staged files that stopped changing, then insert every new session, scan, file and task.

    Args:
        share: The share root to ingest; empty: the storage layout's share.
        consolidate_first: Move finished files from staging into the share first.
        min_age_s: A staged file moves only once its size and time have not changed for this many seconds and
            no process holds it open for writing.
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
        rspace_block: Name of the labpipe rspace notebook block; each session's summary is appended to its user's
            entry (nothing when no such block is saved; an RSpace outage never fails the ingest).
    """
    roots = layout(layout_block)
    share_root = Path(share) if share else roots.share
    consolidation = consolidate_staging(roots.staging, share_root, min_age_s) if consolidate_first else None
    report = insert_share(share_root, database_settings(db_block), roots)
    if report.inserted or any(report.tasks_inserted.values()):  # the populations' deployments trigger on it
        emit_event(
            event="labpipe.ingest.sessions.inserted",
            resource={
                "prefect.resource.id": f"labpipe.ingest.share.{share_root.name}",
                "prefect.resource.name": "ingest",
            },
            payload={"run_id": report.run_id, "inserted": report.inserted, "tasks": report.tasks_inserted},
        )
    notebooks = post_to_notebooks(report, rspace_settings(rspace_block))
    publish_markdown(_ingest_summary(report, consolidation) + notebooks, key="ingest-summary",
                     description="ingest run summary")  # fmt: skip
    if report.status != "succeeded":
        raise RunFailed(f"ingest run {report.run_id}", f"{len(report.failures)} sessions failed",
                        "the others were ingested; the run's summary names each failure")  # fmt: skip
    return {k: v for k, v in report.as_json().items() if k not in ("sessions", "rejected")}


@task(name="populate", task_run_name="populate-{population}")
def populate_task(population: str, share: Path, max_calls: int | None, db: DatabaseSettings, roots: Layout):
    return run_population(
        open_lab_database(db, blobs=roots.blobs),
        population,
        share,
        max_calls=max_calls,
        progress=Progress(f"{population} tables"),
    )


@flow(name="populate", flow_run_name="populate-{population}")
def populate(
    population: Literal["mocap"] = "mocap",
    max_calls: int | None = None,
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """One worker of a DataJoint population; run several at once, each key is computed once.

    Args:
        population: mocap (Motive .csv exports); imaging, behaviour and spikes run in flows/imaging.py.
        max_calls: Stop after this many keys (empty: until none is left).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    roots = layout(layout_block)
    result = populate_task(population, roots.share, max_calls, database_settings(db_block), roots)
    publish_markdown(
        f"# populate {population}\ncomputed {result.computed}; still to do {result.remaining}\n\n"
        f"## errors ({len(result.errors)})\n" + markdown_table(result.errors, ["table", "key", "error"]),
        key=f"populate-{population}",
        description=f"{population} population summary",
    )
    return {"computed": result.computed, "errors": len(result.errors), "remaining": result.remaining}


@task(name="recover-reserved-jobs")
def recover_reserved(heartbeat_window_s: float, db: DatabaseSettings, roots: Layout) -> list[dict]:
    cleared = recover_reserved_jobs(
        every_population_table(open_lab_database(db, blobs=roots.blobs)), heartbeat_window_s=heartbeat_window_s
    )
    for job in cleared:
        logger().warning("released %s %s (host %s, pid %s): %s", job.table, job.key, job.host, job.pid, job.message)
    return [job.as_json() for job in cleared]


@flow(name="recover-jobs", flow_run_name="recover-jobs")
def recover_jobs(
    heartbeat_window_s: float = DEFAULT_HEARTBEAT_WINDOW_S,
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """Re-queue DataJoint jobs reserved by workers that died (connection gone, pid reused) or stopped beating.

    Args:
        heartbeat_window_s: A reservation whose worker has not beaten for this many seconds is released.
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    cleared = recover_reserved(heartbeat_window_s, database_settings(db_block), layout(layout_block))
    rows = [{**job, "key": ", ".join(f"{k}={v}" for k, v in job["key"].items())} for job in cleared]
    publish_markdown(
        f"# Reserved jobs recovered: {len(cleared)}\n\n"
        + markdown_table(rows, ["table", "key", "host", "pid", "reserved_time", "message"]),
        key="recover-jobs",
        description="reservations of dead workers released",
    )
    return {"recovered": len(cleared), "jobs": cleared}


@flow(name="dump-database", flow_run_name="dump-database")
def dump_database(layout_block: str | None = "default", db_block: str | None = "default") -> str:
    """A consistent dump (pg_dump / mysqldump) of the lab database into the dumps root.

    Args:
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    path = dump_lab_database(lab_database(db_block, layout_block), layout(layout_block).dumps)
    publish_markdown(f"Dump written: `{path}` ({path.stat().st_size} bytes)", key="dump", description="database dump")
    return str(path)
