"""``labpipe radio``: simulate the DSA-110, convert groups by hand, watch the stream, list and recover groups."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from labpipe.cli.radio_products import app as products_app

NAME = "radio"
app = typer.Typer(
    help="The DSA-110 radio lifecycle: simulated instrument, streaming, conversion, products.", no_args_is_help=True
)
app.add_typer(products_app, name="products")


def _parse_corrupt(values: list[str]) -> dict[int, str]:
    corrupt = {}
    for value in values:
        sb, _, kind = value.partition(":")
        if not sb.isdigit() or kind not in ("truncate", "garbage", "wrong_shape"):
            raise typer.BadParameter(f"{value!r}: expected SUBBAND:truncate|garbage|wrong_shape, e.g. 5:truncate")
        corrupt[int(sb)] = kind
    return corrupt


def _parse_subbands(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r}: expected comma-separated subband numbers, e.g. 3,7") from exc


@app.command()
def simulate(
    out_dir: Path = typer.Argument(..., help="Folder to write the subband files into (e.g. the radio incoming/)."),
    groups: int = typer.Option(1, help="Consecutive groups (309 s apart) to write."),
    antennas: int = typer.Option(96, help="Antennas (few, e.g. 6, for quick tests)."),
    start: str = typer.Option(None, help="UTC start of the first group, ISO (default: a fixed date)."),
    calibrator: str = typer.Option(None, help="Centre the stream on this calibrator's transit (e.g. 3C286)."),
    dec: float = typer.Option(None, help="Pointing declination in degrees (default: the calibrator's, or 55)."),
    catalog: Path = typer.Option(None, help="Sky catalog CSV (ra_deg, dec_deg, flux_jy[, spectral_index])."),
    jitter: float = typer.Option(0.0, help="File-name timestamp jitter per subband, up to +- this many seconds."),
    missing: str = typer.Option("", help="Subbands to leave out of every group, e.g. 3,7."),
    corrupt: list[str] = typer.Option([], help="SUBBAND:truncate|garbage|wrong_shape (first group only)."),
    interval: float = typer.Option(0.0, help="Seconds of wall time between groups (streams arriving over time)."),
    truth_dir: Path = typer.Option(None, help="Where the true gains/delays/bandpass go (default OUT_DIR/truth)."),
    corruptions: bool = typer.Option(True, help="Apply per-antenna gains, delays and bandpasses."),
    noise: bool = typer.Option(True, help="Add thermal noise."),
    small_files: bool = typer.Option(False, help="Store visibilities as complex64 (half the DSA-110 file size)."),
    seed: int = typer.Option(0),
) -> None:
    """Write simulated DSA-110 groups: 16 UVH5 subband files each, plus their truth (.npz) and sky catalog."""
    from labpipe.radio.simulate import Corruptions, GroupFaults, simulate_stream

    faults = {0: GroupFaults(corrupt=_parse_corrupt(corrupt))} if corrupt else {}
    missing_sb = _parse_subbands(missing)
    if missing_sb:
        faults = {
            k: GroupFaults(missing=missing_sb, corrupt=faults.get(k, GroupFaults()).corrupt) for k in range(groups)
        }
    written = simulate_stream(
        out_dir,
        groups,
        start=start,
        interval_s=interval,
        faults=faults,
        seed=seed,
        n_antennas=antennas,
        calibrator=calibrator,
        pointing_dec_deg=dec,
        catalog=catalog,
        jitter_s=jitter,
        truth_dir=truth_dir,
        corruptions=Corruptions(enabled=corruptions),
        noise=noise,
        data_dtype="complex64" if small_files else "complex128",
        on_file=lambda path: typer.echo(f"  {path.name}"),
    )
    for g in written:
        extra = f", calibrator {g.calibrator}" if g.calibrator else ""
        typer.echo(f"group {g.group_id}: {len(g.files)} files, dec {g.pointing_dec_deg:.2f}{extra}; truth {g.truth}")


def _print(data) -> None:
    typer.echo(json.dumps(data, indent=1, default=str))


def _bar(description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=True)
    task = progress.add_task(description, total=None)
    return progress, lambda done, total: progress.update(task, completed=done, total=total)


def _settings():
    from labpipe.blocks.radio import radio_settings

    return radio_settings()


def _context():
    from labpipe.blocks import lab_database
    from labpipe.blocks.radio import radio_tree

    return lab_database(), radio_tree("default")


@app.command()
def convert(
    files: list[Path] = typer.Argument(..., exists=True, dir_okay=False, help="The subband files of one group."),
    out: Path = typer.Option(..., "--out", help="The Measurement Set to write (PATH.ms)."),
    staging: str = typer.Option(None, help="auto | tmpfs | disk (default: the RadioStreaming block's)."),
    policy: str = typer.Option(None, help="A bad file: flag | fail (default: the block's)."),
    dask: bool = typer.Option(False, help="Fan out on the configured Dask cluster (default: threads here)."),
    overwrite: bool = typer.Option(False, help="Replace an existing MS at --out."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Convert one group of subband files into one MS, by hand (phased to the meridian at mid-time)."""
    from labpipe.blocks import dask_settings
    from labpipe.compute import dask_client
    from labpipe.errors import LabpipeError
    from labpipe.radio.convert import convert_group

    settings = _settings()
    update = {k: v for k, v in dict(staging=staging, bad_file_policy=policy).items() if v}
    settings = settings.model_copy(update=update)
    progress, update_bar = _bar(f"converting into {out.name}")
    try:
        with progress, dask_client(dask_settings()) if dask else _Nothing() as client:
            result = convert_group(
                files, out, settings=settings, client=client, progress=update_bar, overwrite=overwrite
            )
    except LabpipeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if as_json:
        _print(result.as_json())
        return
    typer.echo(
        f"{result.ms_path}: {result.n_rows} rows x {result.n_channels} channels, phased to "
        f"RA {result.phase_ra_deg:.4f} Dec {result.phase_dec_deg:.4f} at {result.mid_time}; "
        f"staged on {result.staging}; {result.seconds:.1f} s"
    )
    if result.subbands_flagged:
        typer.echo(f"flagged subbands: {result.subbands_flagged}")
    for path, reason in result.bad_files.items():
        typer.echo(f"  bad file {path}: {reason}")


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@app.command()
def scan(as_json: bool = typer.Option(False, "--json")) -> None:
    """Record new files in the radio tree's incoming/, form groups, queue complete and timed-out ones."""
    from labpipe.radio.stream import recover_stuck, scan_incoming

    db, tree = _context()
    settings = _settings()
    recovered = recover_stuck(db, settings, tree=tree, convert_settings=settings)
    report = scan_incoming(db, tree, settings)
    if as_json:
        _print({"recovered": recovered, **report.as_json()})
        return
    typer.echo(
        f"{report.new_files} new files; queued {report.queued or '-'}; queued incomplete "
        f"{report.queued_incomplete or '-'}; failed incomplete {report.failed_incomplete or '-'}; collecting "
        f"{report.collecting or '-'}; recovered {[r['group_id'] for r in recovered] or '-'}"
    )
    for name in report.late + report.duplicates:
        typer.echo(f"  arrived after its group was queued: {name}")


@app.command()
def run(max_groups: int = typer.Option(None, help="Stop after this many groups.")) -> None:
    """Claim and convert pending groups in this process (the radio-convert flow does the same on the cpu pool)."""
    from labpipe.radio.stream import convert_pending

    db, tree = _context()
    progress, update_bar = _bar("subbands")
    with progress:
        outcomes = convert_pending(
            db, tree, settings=_settings(), limit=max_groups, progress=lambda g, d, n: update_bar(d, n)
        )
    for o in outcomes:
        where = o.get("ms_path") or o.get("log_path")
        typer.echo(f"{o['group_id']}: {o['state']} {o.get('kind') or ''} {where} {o.get('error') or ''}".rstrip())
    if any(o["state"] == "failed" for o in outcomes):  # "lost": another attempt converts the group
        raise typer.Exit(1)


@app.command()
def groups(
    state: list[str] = typer.Option([], help="Only groups in these states."),
    limit: int = typer.Option(50),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Groups, newest first, with their state, MS or error."""
    from labpipe.radio.stream import group_rows

    db, _ = _context()
    rows = group_rows(db, states=tuple(state), limit=limit)
    if as_json:
        _print(rows)
        return
    for g in rows:
        detail = g["ms_path"] or g["error"] or (f"missing {g['missing']}" if g["missing"] else "")
        typer.echo(f"{g['group_id']}  {g['state']:<11} {g['n_files']:>2} files  {detail}")
    typer.echo(f"{len(rows)} groups")


@app.command()
def recover() -> None:
    """Give back groups held by dead or silent workers (pending again, or failed after too many attempts)."""
    from labpipe.radio.stream import recover_stuck

    db, tree = _context()
    settings = _settings()
    for r in recover_stuck(db, settings, tree=tree, convert_settings=settings):
        typer.echo(f"{r['group_id']}: {r['state']} ({r['reason']}; was {r['worker']})")


@app.command()
def requeue(group: str = typer.Argument(..., help="Group id, YYYY-MM-DDTHH:MM:SS.")) -> None:
    """Queue a failed or completed group again (late files fill its missing subbands)."""
    from labpipe.errors import LabpipeError
    from labpipe.radio.stream import requeue as requeue_group

    db, _ = _context()
    try:
        requeue_group(db, group)
    except LabpipeError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{group}: pending")
