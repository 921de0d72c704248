"""``labpipe backup``: create the repository (``init``, the only way), run a backup, restore, list, prune,
check, retention, disk watch, break a stale lock.

Configuration comes from the backup blocks (``default`` documents) when the
platform's Prefect server answers, else from their defaults under
``$LABPIPE_HOME``. ``run`` runs the backup flow in this process; the other
commands call the backup library directly, with a progress bar where they take long.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import typer
from labpipe.cli.common import fail, progress_bar

NAME = "backup"
app = typer.Typer(help="Backups (borg + rclone), retention and disk watch.", no_args_is_help=True)


def _borg():
    from labpipe.blocks import layout
    from labpipe.blocks.backup import borg_client

    return borg_client("default", layout())


@app.command()
def init(
    replace: bool = typer.Option(
        False, "--replace", help="Make (or record) a new repository where a known one is missing or differs."
    ),
) -> None:
    """Create the borg repository and record its id: the only way labpipe creates one (runs never do)."""
    from labpipe.errors import LabpipeError

    borg = _borg()
    try:
        created = borg.init(replace=replace)
        repository_id = borg.open()
    except LabpipeError as exc:
        fail(exc)
    if created:
        typer.echo(
            f"created repository {borg.location} (id {repository_id}, {borg.repo.encryption}); its passphrase and "
            f"exported key are under {borg.secrets_dir}: copy them somewhere safe"
        )
    else:
        typer.echo(f"repository {borg.location} exists already (id {repository_id}, recorded)")


@app.command()
def run(
    dumps: bool = typer.Option(True, help="Run the database dump hooks first."),
    offsite: bool = typer.Option(True, help="Copy the repository and archive folders to the rclone remote."),
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON report."),
) -> None:
    """Dumps, pull, borg create, restore proof, prune, compact, check, off-site copy (the backup flow, here)."""
    from labpipe.config import get_settings
    from labpipe.deployments.platform import api_healthy

    if not api_healthy(get_settings().api_url):
        typer.echo(f"no Prefect server at {get_settings().api_url}: running with a temporary one (blocks: defaults)")
        os.environ.pop("PREFECT_API_URL", None)
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # busy hosts start slowly
    from labpipe.flows.backup import backup

    try:
        report = backup(run_dumps=dumps, offsite=offsite)
    except RuntimeError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(report, indent=1, default=str))
        return
    stats = report["stats"] or {}
    typer.echo(
        f"archive {report['archive']}: {report['status']}; {stats.get('nfiles', 0)} files, "
        f"{stats.get('original_size', 0) / 1e6:.1f} MB, {stats.get('deduplicated_size', 0) / 1e6:.2f} MB new; "
        f"proof {'ok' if report['proof_ok'] else 'FAILED'}, check {'ok' if report['check_ok'] else 'FAILED'}"
    )


@app.command()
def restore(
    archive: str = typer.Argument(..., help="Archive name (see `labpipe backup list`)."),
    to: Path = typer.Option(..., "--to", help="New (or empty) folder to restore into."),
    verify: bool = typer.Option(True, help="Compare every restored file with the archive's SHA-256."),
) -> None:
    """Restore a whole archive into a new folder, proven file by file against the archive."""
    from labpipe.backup.proof import restore_archive
    from labpipe.errors import LabpipeError

    progress, update = progress_bar(f"restore {archive}", unit="bytes")
    try:
        with progress:
            result = restore_archive(_borg(), archive, to, verify=verify, progress=update)
    except LabpipeError as exc:
        fail(exc)
    proof = "every file matches the archive (SHA-256)" if result.verified else "not verified"
    typer.echo(f"restored {result.files} files ({result.bytes / 1e6:.1f} MB) into {result.destination}: {proof}")


@app.command("list")
def list_archives(as_json: bool = typer.Option(False, "--json")) -> None:
    """Archives in the repository and the repository's size."""
    from labpipe.errors import LabpipeError

    borg = _borg()
    try:
        archives, info = borg.archives(), borg.info()
    except LabpipeError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps({"repository": borg.location, "archives": archives, "stats": info}, indent=1))
        return
    for archive in archives:
        typer.echo(f"{archive['name']:<40} {archive['start'][:19]}")
    typer.echo(
        f"{len(archives)} archives in {borg.location}: {info.get('unique_csize', 0) / 1e6:.1f} MB on disk "
        f"for {info.get('total_size', 0) / 1e6:.1f} MB archived"
    )


@app.command()
def prune(dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be removed.")) -> None:
    """borg prune by the backup plan's keep rules, then compact."""
    from labpipe.backup.runlock import backup_lock
    from labpipe.blocks import layout
    from labpipe.blocks.backup import backup_plan
    from labpipe.errors import LabpipeError

    borg, plan = _borg(), backup_plan()
    try:
        with backup_lock(layout().backups, "labpipe backup prune"):
            borg.open()  # the known repository, not whatever is mounted there now
            result = borg.prune(plan, dry_run=dry_run)
            compacted = "" if dry_run else borg.compact()
    except LabpipeError as exc:
        fail(exc)
    for name, rule in result.kept.items():
        typer.echo(f"keep   {name}  ({rule})")
    for name in result.pruned:
        typer.echo(f"{'would prune' if dry_run else 'pruned'} {name}")
    if compacted:
        typer.echo(compacted)


@app.command()
def check(verify_data: bool = typer.Option(False, "--verify-data", help="Read and verify every chunk (slow).")) -> None:
    """borg check: repository and newest archives, or all data."""
    from labpipe.blocks.backup import backup_plan
    from labpipe.errors import LabpipeError

    plan = backup_plan()
    try:
        result = _borg().check(
            repository=plan.check_repository,
            last_archives=plan.check_last_archives,
            verify_data=verify_data,
            max_duration=plan.check_max_duration,
        )
    except LabpipeError as exc:
        fail(exc)
    typer.echo(f"borg check ({result.what}): {'ok' if result.ok else 'PROBLEMS'} in {result.seconds:.1f} s")
    for problem in result.problems:
        typer.echo(f"  {problem}")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def retention(
    dry_run: bool = typer.Option(False, "--dry-run", help="List what the policies would do; touch nothing."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Apply the retention policies: archive, verify, record, then delete (default policies keep everything)."""
    from labpipe.backup.retention import run_retention
    from labpipe.blocks import lab_database, layout
    from labpipe.blocks.backup import rclone_remote, retention_policies

    progress, update = progress_bar("retention")
    with progress:
        plan, done = run_retention(layout(), retention_policies(), rclone_remote(), lab_database(), dry_run=dry_run,
                                   holder="labpipe backup retention", progress=update)  # fmt: skip
    if as_json:
        planned = [{k: str(v) for k, v in c.__dict__.items()} for c in plan.candidates]
        typer.echo(json.dumps({"policies": plan.kept, "planned": planned, "done": done}, indent=1))
        return
    for row in plan.kept:
        typer.echo(f"{row['policy']:<36} {row['rule']:<32} {row['entries']:>6} entries, {row['due']} due")
    for c in plan.candidates:
        typer.echo(
            f"{'would ' if dry_run else ''}{c.action}: {c.root}/{c.rel} ({c.files} files, "
            f"{c.bytes / 1e6:.1f} MB, {c.age_days:.0f} days old)"
        )
    for row in done:
        typer.echo(f"{row['status']:<8} {row['root']}/{row['rel']} {row['location']} {row['detail']}")
    if any(row["status"] == "failed" for row in done):
        raise typer.Exit(1)


@app.command()
def diskwatch(
    serve: bool = typer.Option(False, help="Serve the Prometheus gauges until interrupted."),
    port: int = typer.Option(None, help="Exporter port (default: the disk watch block's)."),
    address: str = typer.Option(None, help="Exporter address (default: the disk watch block's)."),
) -> None:
    """Free space, tmpfs use, incoming counts and alarms now; ``--serve`` runs the Prometheus exporter."""
    from labpipe.backup.diskwatch import DiskCollector, measure, serve_metrics
    from labpipe.blocks import layout
    from labpipe.blocks.backup import diskwatch_settings

    roots, settings = layout(), diskwatch_settings()
    report = measure(roots, settings)
    for s in report.samples:
        typer.echo(
            f"{s.target:<12} {s.free / 1e9:9.2f} GB free {s.used_percent:6.1f} % used  "
            f"{report.levels.get(s.target, '')}  {s.path}"
        )
    for folder, count in report.incoming.items():
        typer.echo(f"incoming {folder}: {count} files")
    for alarm in report.alarms:
        typer.secho(alarm.message, fg="red" if alarm.level == "critical" else "yellow")
    if serve:
        history = roots.backups / "diskwatch" / "history.json"
        server, _ = serve_metrics(
            DiskCollector(roots, settings, history), address or settings.metrics_address, port or settings.metrics_port
        )
        typer.echo(
            f"serving gauges on http://{address or settings.metrics_address}:{port or settings.metrics_port}"
            "/metrics (Ctrl-C stops)"
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            server.shutdown()


@app.command("break-lock")
def break_lock(
    force: bool = typer.Option(False, help="Break a lock held on another host (after you checked)."),
) -> None:
    """Break the repository lock of a borg process that is gone (never one that still runs here)."""
    borg = _borg()
    holders = borg.lock_holders()
    if not holders:
        typer.echo("the repository is not locked")
        return
    for h in holders:
        typer.echo(f"lock held by {h.host} pid {h.pid}: {h.state}")
    if any(h.state == "running" for h in holders):
        typer.echo("a process on this host still holds it: not breaking")
        raise typer.Exit(1)
    if any(h.state == "foreign" for h in holders) and not force:
        typer.echo("held from another host: check that its borg is gone, then run with --force")
        raise typer.Exit(1)
    borg.break_lock()
    typer.echo("lock broken")
