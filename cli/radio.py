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


# By hand, as CASA and WSClean users expect: one step on one MS, outside the stream and the registry.


def _cal_settings(cal_block: str, catalog: Path | None, channels_per_unit: int | None):
    from labpipe.blocks.radio_calibrate import calibration_settings

    settings = calibration_settings(cal_block)
    if catalog is not None:
        settings.calibration.sky.catalog = str(catalog)
    if channels_per_unit:
        settings.calibration.channels_per_unit = channels_per_unit
    return settings


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


MS_ARG = typer.Argument(..., exists=True, file_okay=False, help="The Measurement Set (a PATH.ms folder).")
CAL_BLOCK = typer.Option("default", "--cal-block", help="Radio calibration block whose settings to use.")
CHANNELS = typer.Option(None, "--channels-per-unit", help="Channels read at once (default: the block's, 48).")


@app.command()
def flag(
    ms: Path = MS_ARG,
    strategy: Path = typer.Option(None, exists=True, dir_okay=False, help="AOFlagger Lua strategy file."),
    antenna_level: bool = typer.Option(None, help="Also flag on each antenna's own image."),
    baseline_level: bool = typer.Option(None, help="Also run AOFlagger on every baseline (slow)."),
    cal_block: str = CAL_BLOCK,
    channels_per_unit: int = CHANNELS,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Flag interference in one MS with AOFlagger (adds to FLAG; existing flags stay), like CASA flagdata."""
    from labpipe.errors import LabpipeError
    from labpipe.radio import flagging

    settings = _cal_settings(cal_block, None, channels_per_unit)
    update = dict(strategy=str(strategy) if strategy else None, antenna_level=antenna_level,
                  baseline_level=baseline_level, channels_per_unit=settings.calibration.channels_per_unit)  # fmt: skip
    flag_settings = settings.flagging.model_copy(update={k: v for k, v in update.items() if v is not None})
    progress, update_bar = _bar(f"flagging {ms.name}")
    try:
        with progress:
            report = flagging.flag_ms(ms, flag_settings, progress=update_bar)
    except LabpipeError as exc:
        raise _fail(exc) from exc
    result = {
        "ms": str(ms), "flagged_before": report.flagged_before, "flagged_after": report.flagged_after,
        "bad_antennas": report.bad_antennas, "array_cells": report.array_cells,
        "antenna_cells": report.antenna_cells, "baseline_cells": report.baseline_cells, "timings": report.timings,
    }  # fmt: skip
    if as_json:
        _print(result)
        return
    typer.echo(
        f"{ms}: flagged {report.flagged_before:.1%} -> {report.flagged_after:.1%}; bad antennas "
        f"{', '.join(report.bad_antennas) or 'none'}; {report.timings.get('total_s', 0):.1f} s"
    )


@app.command()
def calibrate(
    ms: Path = MS_ARG,
    solve: str = typer.Option("KBPG", help="KBPG (delay, bandpass, gains) or G (gains only, needs --apply-from)."),
    catalog: Path = typer.Option(None, exists=True, dir_okay=False, help="Sky catalog CSV (default: the block's)."),
    out: Path = typer.Option(None, help="Prefix of the tables (default: the MS path without .ms)."),
    apply_from: list[Path] = typer.Option([], help="K/BP tables to solve G on top of (with --solve G)."),
    apply: bool = typer.Option(True, help="Apply the solved tables into CORRECTED_DATA."),
    cal_block: str = CAL_BLOCK,
    channels_per_unit: int = CHANNELS,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Solve one MS on the sky model (StEFCal), write CASA tables (PREFIX.kcal/.bpcal/.gpcal), apply them.

    Nothing is registered: the tables are yours (the stream's registry only takes what its flows solve).
    """
    from labpipe.errors import InvalidInput, LabpipeError
    from labpipe.radio import calibrate as cal
    from labpipe.radio import caltable, skymodel
    from labpipe.radio.calrun import catalog_path
    from labpipe.radio.ms import read_layout

    if solve not in ("KBPG", "G"):
        raise typer.BadParameter(f"{solve!r}: expected KBPG or G", param_hint="--solve")
    if (solve == "G") != bool(apply_from):
        raise typer.BadParameter("K/BP tables go with --solve G, and --solve G needs them", param_hint="--apply-from")
    settings = _cal_settings(cal_block, catalog, channels_per_unit)
    prefix = Path(out) if out else ms.with_suffix("")
    progress, update_bar = _bar(f"solving {ms.name}")
    try:
        if not settings.calibration.sky.catalog:
            raise InvalidInput(ms, "no sky catalog to solve against", "pass --catalog CSV or set it in the block")
        catalog_rows = skymodel.read_catalog(catalog_path(ms.parent, settings))
        layout = read_layout(ms, settings.calibration.channels_per_unit)
        chain = None
        if solve == "G":
            chain = cal.CalChain()
            for path in apply_from:
                table = caltable.read_table(path)
                if table.kind not in ("K", "BP") or getattr(chain, table.kind.lower()) is not None:
                    raise InvalidInput(path, f"a {table.kind} table here", "pass one K and/or one BP table")
                cal.check_fits(table, layout, path)
                setattr(chain, table.kind.lower(), table)
        with progress:
            solution = cal.solve_group(
                layout, catalog_rows, settings.calibration, solve=solve, chain=chain, progress=update_bar
            )
        tables = {}
        for sol in (s for s in (solution.k, solution.bp, solution.g) if s is not None):
            path = Path(f"{prefix}.{caltable.SUFFIX[sol.kind]}")
            caltable.write_table(sol, layout, path)
            passed, reason = cal.passes_qa(sol, settings.calibration)
            tables[sol.kind] = {"path": str(path), "passed": passed, "reason": reason, "qa": sol.qa()}
        if apply:
            applied = cal.CalChain(k=solution.k or (chain.k if chain else None),
                                   bp=solution.bp or (chain.bp if chain else None), g=[solution.g])  # fmt: skip
            cal.apply_chain(layout, applied)
    except LabpipeError as exc:
        raise _fail(exc) from exc
    finally:
        import shutil

        scratch = getattr(locals().get("solution"), "scratch", None)
        if scratch and Path(scratch).name.startswith("labpipe-cal-"):
            shutil.rmtree(scratch, ignore_errors=True)
    if as_json:
        _print({"ms": str(ms), "tables": tables, "applied": apply, "timings": solution.timings})
        return
    for kind, t in tables.items():
        typer.echo(f"{kind}: {t['path']} ({'passed' if t['passed'] else 'FAILED: ' + t['reason']})")
    if apply:
        typer.echo(f"applied into {ms}/CORRECTED_DATA")


@app.command()
def image(
    ms: Path = MS_ARG,
    out: Path = typer.Option(None, help="Prefix of the FITS images (default: the MS path without .ms)."),
    column: str = typer.Option(None, help="MS column to image (default: CORRECTED_DATA)."),
    npix: int = typer.Option(None, help="Image size in pixels (default: the block's)."),
    cell: float = typer.Option(None, "--cell", help="Pixel size in arcseconds (default: the block's)."),
    sources: bool = typer.Option(False, help="Also find sources (PyBDSF) into PREFIX.srl.fits."),
    cal_block: str = CAL_BLOCK,
    channels_per_unit: int = CHANNELS,
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Image one MS (Briggs weighting, CLEAN, restored, primary-beam corrected FITS), like WSClean."""
    from labpipe.errors import LabpipeError
    from labpipe.radio import imaging, sourcefind
    from labpipe.radio.ms import read_layout

    settings = _cal_settings(cal_block, None, channels_per_unit)
    update = {k: v for k, v in dict(column=column, npix=npix, cell_arcsec=cell).items() if v is not None}
    image_settings = settings.imaging.model_copy(update=update)
    prefix = Path(out) if out else ms.with_suffix("")
    progress, update_bar = _bar(f"CLEAN {ms.name}")
    try:
        layout = read_layout(ms, settings.calibration.channels_per_unit)
        with progress:
            result = imaging.clean_image(layout, image_settings, settings.calibration.sky, progress=update_bar)
        paths = imaging.write_fits(result, layout, prefix)
        found = None
        if sources:
            found = sourcefind.find_sources(paths["image"], paths.get("pb"), Path(f"{prefix}.srl.fits"),
                                            settings.science.sources)  # fmt: skip
    except LabpipeError as exc:
        raise _fail(exc) from exc
    summary = {
        "ms": str(ms), "images": {k: str(v) for k, v in paths.items()}, "npix": result.npix,
        "cell_arcsec": result.cell_deg * 3600, "clean_components": result.n_components,
        "timings": result.timings,
        "sources": len(found.detections) if found else None, "catalogue": str(found.catalogue) if found else None,
    }  # fmt: skip
    if as_json:
        _print(summary)
        return
    for kind, path in paths.items():
        typer.echo(f"{kind}: {path}")
    if found:
        typer.echo(f"{len(found.detections)} sources: {found.catalogue}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind (another than loopback needs --certfile/--keyfile)."),
    port: int = typer.Option(8790, help="Port."),
    radio_root: Path = typer.Option(None, help="The radio tree (default: $LABPIPE_RADIO_ROOT, else the layout's)."),
    token_file: Path = typer.Option(
        None, help="Bearer token file, mode 0600 (default: $LABPIPE_RADIO_API_TOKEN_FILE, else HOME/radio/api-token)."
    ),
    new_token: bool = typer.Option(False, help="Write a new random token into the token file first (0600)."),
    certfile: Path = typer.Option(None, help="TLS certificate (PEM, with its chain): serve HTTPS."),
    keyfile: Path = typer.Option(None, help="TLS private key (PEM, mode 600)."),
) -> None:
    """Serve the products API and page (read-only, token-protected): images, mosaics, sources, light curves, QA,
    calibration registry and directory statistics."""
    from labpipe.config import get_settings
    from labpipe.errors import ConfigError
    from labpipe.radio.api import ApiConfig, create_app, write_token
    from labpipe.vms.server import check_listen, server_config

    try:
        check_listen(host, certfile, keyfile)

        def defaults():
            from labpipe.blocks import layout

            return layout("default").radio, get_settings().home / "radio" / "api-token"

        config = ApiConfig.from_env(radio_root, token_file, defaults=defaults)
        if new_token:
            write_token(config.token_file)
        db, _ = _context()
        api = create_app(db, config)
    except ConfigError as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(2) from exc
    import uvicorn

    scheme = "https" if certfile else "http"
    typer.echo(f"radio products on {scheme}://{host}:{port}/ (token in {config.token_file})", err=True)
    uvicorn.Server(server_config(api, host, port, certfile, keyfile)).run()
