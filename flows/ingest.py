"""Ingest lifecycle flows (ADAMACS): consolidate -> scan share -> insert -> populate, and DB dumps.

Deployments (deployments/prefect.yaml): ``ingest`` every 5 minutes on the cpu
pool, ``populate-imaging`` / ``populate-mocap`` on the cpu pool (start several
runs to get several workers), ``dump-database``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from labpipe.db.connect import dump_lab_database
from labpipe.flows.common import Progress, lab_database, layout, logger, markdown_table, publish_markdown
from labpipe.ingest.consolidate import ConsolidationReport, consolidate
from labpipe.ingest.populate import PopulateResult, run_population
from labpipe.ingest.run import IngestReport, ingest_share
from prefect import flow, task
from prefect.events import emit_event


def _share_label() -> str:
    from prefect.runtime import flow_run

    share = flow_run.parameters.get("share")
    return Path(share).name if share else "share"


@task(name="consolidate-staging", task_run_name="consolidate-{staging.name}")
def consolidate_staging(staging: Path, share: Path) -> ConsolidationReport:
    report = consolidate(staging, share)
    for problem in report.problems:
        logger().warning("not consolidated: %s: %s", problem.path, problem.reason)
    return report


@task(name="insert-share", task_run_name="insert-{share.name}", retries=2, retry_delay_seconds=10)
def insert_share(share: Path, db_block: str | None, layout_block: str | None) -> IngestReport:
    db = lab_database(db_block, layout_block)
    return ingest_share(db, share, progress=Progress("sessions parsed and inserted", every=2.0))


def _ingest_summary(report: IngestReport, consolidation: ConsolidationReport | None) -> str:
    lines = [
        f"# Ingest run `{report.run_id}`: **{report.status}**",
        f"Share `{report.share_root}`: {report.inserted} sessions inserted, {report.updated} updated, "
        f"{report.skipped} already ingested; {report.files_inserted} files; tasks {report.tasks_inserted or '{}'}.",
    ]
    if consolidation is not None:
        lines.append(f"Consolidated {len(consolidation.moved)} files from staging.")
    problems = report.rejected + report.failures
    if consolidation is not None:
        problems += [{"path": p.path, "reason": p.reason} for p in consolidation.problems]
    lines.append(f"\n## Rejected or failed ({len(problems)})\n")
    lines.append(markdown_table(problems, ["path", "reason"]))
    return "\n".join(lines)


@flow(name="ingest", flow_run_name=lambda: f"ingest-{_share_label()}", log_prints=True)
def ingest(
    share: str | None = None,
    consolidate_first: bool = True,
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """Consolidate staged files, then insert every new session, scan, file and task of the share."""
    roots = layout(layout_block)
    share_root = Path(share) if share else roots.share
    consolidation = consolidate_staging(roots.staging, share_root) if consolidate_first else None
    report = insert_share(share_root, db_block, layout_block)
    if report.inserted or any(report.tasks_inserted.values()):  # the populations' deployments trigger on it
        emit_event(
            event="labpipe.ingest.sessions.inserted",
            resource={
                "prefect.resource.id": f"labpipe.ingest.share.{share_root.name}",
                "prefect.resource.name": "ingest",
            },
            payload={"run_id": report.run_id, "inserted": report.inserted, "tasks": report.tasks_inserted},
        )
    publish_markdown(_ingest_summary(report, consolidation), key="ingest-summary", description="ingest run summary")
    if report.status != "succeeded":
        raise RuntimeError(f"ingest run {report.run_id} had {len(report.failures)} failed sessions; see its summary")
    return {k: v for k, v in report.as_json().items() if k not in ("sessions", "rejected")}


@task(name="populate", task_run_name="populate-{population}")
def populate_task(population: str, share: Path, max_calls: int | None, db_block, layout_block) -> PopulateResult:
    db = lab_database(db_block, layout_block)
    return run_population(db, population, share, max_calls=max_calls, progress=Progress(f"{population} tables"))


@flow(name="populate", flow_run_name="populate-{population}")
def populate(
    population: Literal["imaging", "mocap"] = "imaging",
    max_calls: int | None = None,
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """One worker of a DataJoint population; run several at once, each key is computed once."""
    roots = layout(layout_block)
    result = populate_task(population, roots.share, max_calls, db_block, layout_block)
    publish_markdown(
        f"# populate {population}\ncomputed {result.computed}; still to do {result.remaining}\n\n"
        f"## errors ({len(result.errors)})\n" + markdown_table(result.errors, ["table", "key", "error"]),
        key=f"populate-{population}",
        description=f"{population} population summary",
    )
    return {"computed": result.computed, "errors": len(result.errors), "remaining": result.remaining}


@flow(name="dump-database", flow_run_name="dump-database")
def dump_database(layout_block: str | None = "default", db_block: str | None = "default") -> str:
    """A consistent dump (pg_dump / mysqldump) of the lab database into the dumps root."""
    path = dump_lab_database(lab_database(db_block, layout_block), layout(layout_block).dumps)
    publish_markdown(f"Dump written: `{path}` ({path.stat().st_size} bytes)", key="dump", description="database dump")
    return str(path)
