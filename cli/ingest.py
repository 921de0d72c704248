"""``labpipe ingest``: consolidate staging, scan a share, simulate one, list and clear stuck jobs, populate by hand."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from labpipe.cli.common import progress_bar

NAME = "ingest"
app = typer.Typer(help="The ADAMACS ingest lifecycle.", no_args_is_help=True)


def _database():
    from labpipe.blocks import lab_database

    return lab_database()


@app.command()
def scan(
    root: Path = typer.Argument(..., exists=True, file_okay=False, help="Share root holding the user folders."),
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON report."),
    dry_run: bool = typer.Option(False, help="Only parse; insert nothing."),
) -> None:
    """Parse every folder under ROOT and insert what is new; report accepted and rejected folders."""
    from dataclasses import asdict

    from labpipe.ingest.run import ingest_share
    from labpipe.ingest.share import scan_share

    parsed = scan_share(root)
    if dry_run:
        report = {
            "sessions": [s.as_json() for s in parsed.sessions],
            "rejected": [asdict(r) for r in parsed.rejected],
            "inserted": 0,
            "skipped": 0,
        }
    else:
        progress, update = progress_bar("ingest")
        with progress:
            report = ingest_share(_database(), root, scan=parsed, progress=update).as_json()
    if as_json:
        typer.echo(json.dumps(report, indent=1, default=str))
    else:
        typer.echo(
            f"{len(report['sessions'])} sessions accepted, {len(report['rejected'])} folders rejected, "
            f"{report['inserted']} inserted, {report['skipped']} skipped"
        )
        for r in report["rejected"]:
            typer.echo(f"  rejected {r['path']}: {r['reason']}")
    if report.get("status") == "failed":
        raise typer.Exit(1)


@app.command()
def simulate(
    out: Path = typer.Argument(..., help="Folder to write the simulated share into."),
    sessions_per_user: int = typer.Option(2),
    scans_per_session: int = typer.Option(1),
    light: bool = typer.Option(False, help="Metadata files only (for throughput tests)."),
    seed: int = typer.Option(0),
) -> None:
    """Write a realistic simulated share (several users, setups, real .tif/.mp4/.csv files, malformed folders)."""
    from labpipe.ingest.simulate import simulate_share

    sim = simulate_share(
        out, sessions_per_user=sessions_per_user, scans_per_session=scans_per_session, light=light, seed=seed
    )
    typer.echo(f"{len(sim.sessions)} sessions and {len(sim.malformed)} malformed folders under {out}")


@app.command()
def consolidate(
    staging: Path = typer.Option(None, help="Staging root (default: the storage layout's)."),
    share: Path = typer.Option(None, help="Share root (default: the storage layout's)."),
    min_age: float = typer.Option(
        None, "--min-age", min=0, help="Seconds a file must be unchanged before it moves (default 120)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print moved, waiting and rejected as JSON."),
) -> None:
    """Move quiet staged files into the share, as the ingest flow does first; report moved, waiting, rejected."""
    from labpipe.ingest.consolidate import DEFAULT_MIN_AGE_S
    from labpipe.ingest.consolidate import consolidate as consolidate_staging

    if staging is None or share is None:
        from labpipe.blocks import layout

        roots = layout()
        staging, share = staging or roots.staging, share or roots.share
    report = consolidate_staging(staging, share, min_age_s=DEFAULT_MIN_AGE_S if min_age is None else min_age)
    if as_json:
        typer.echo(json.dumps(report.as_json(), indent=1))
        return
    for kind in ("waiting", "rejected"):
        for item in getattr(report, kind):
            typer.echo(f"  {kind} {item.path}: {item.reason}")
    typer.echo(f"{len(report.moved)} moved, {len(report.waiting)} waiting, {len(report.rejected)} rejected")


@app.command()
def jobs(
    clear: bool = typer.Option(False, help="Clear stuck and failed jobs so they are retried."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Jobs reserved by dead workers or failed, in every ingest, calcium and behaviour population."""
    from labpipe.db.jobs import clear_jobs, job_problems
    from labpipe.ingest.populate import every_population_table

    db = _database()
    tables = every_population_table(db)
    problems = job_problems(tables)
    if as_json:
        typer.echo(json.dumps([p.as_json() for p in problems], indent=1))
    else:
        for p in problems:
            typer.echo(f"{p.status:<6} {p.table}: {p.key} (host {p.host}, pid {p.pid}) {p.message}")
        typer.echo(f"{len(problems)} stuck or failed jobs")
    if clear:
        typer.echo(f"cleared {clear_jobs(tables)} jobs; the next populate retries them")


def _datajoint_logs_to_stderr() -> None:
    """DataJoint logs a failed key to stdout; the command's stdout is its JSON result."""
    import logging
    import sys

    import datajoint  # noqa: F401 - installs its handler

    for handler in logging.getLogger("datajoint").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


@app.command()
def populate(
    population: str = typer.Argument(
        "imaging", help="imaging (suite2p), denoise, spikes, behavior (labpipe.calcium) or mocap."
    ),
    max_calls: int = typer.Option(None),
    share: Path = typer.Option(None, help="Share root; default: the storage layout's."),
    session: str = typer.Option(None, help="Only this session's keys (its session_id)."),
) -> None:
    """Run one population worker in this process (the flows do the same on the cpu and gpu pools)."""
    from labpipe.blocks import layout
    from labpipe.calcium.populate import POPULATIONS as CALCIUM

    _datajoint_logs_to_stderr()
    roots = layout()
    if share:
        roots = roots.model_copy(update={"share": share})
    if population in CALCIUM:
        from labpipe.blocks.imaging import calcium_context
        from labpipe.calcium.populate import run_population

        progress, update = progress_bar(f"{population} tables")
        with progress:
            result = run_population(
                _database(), population, calcium_context(roots), max_calls=max_calls, session=session, progress=update
            )
    else:
        from labpipe.ingest.populate import run_population

        result = run_population(_database(), population, roots.share, max_calls=max_calls, session=session)
    typer.echo(
        json.dumps({"computed": result.computed, "errors": result.errors, "remaining": result.remaining}, indent=1)
    )
