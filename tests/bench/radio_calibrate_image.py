"""Benchmark: convert + calibrate + image one simulated DSA-110 group; labpipe beside CASA 6.7 and WSClean.

Run alone: ``flock /tmp/labpipe-bench.lock .venv/bin/python tests/bench/radio_calibrate_image.py``
(``--antennas 24`` for a quick run). Steps, on the same Measurement Set:

1. simulate a full-size group (96 antennas, 16 subbands x 48 channels, 24 integrations) with the
   radio simulator, which also writes the true gains, delays and bandpasses (not timed);
2. labpipe: convert (UVH5 -> MS), calibrate (sky model -> MODEL_DATA, K+BP+G by StEFCal on Dask,
   CASA tables, apply into CORRECTED_DATA), image (ducc0, CLEAN, FITS) and QA;
3. CASA 6.7 on a copy of the raw MS with the same MODEL_DATA: gaincal K, bandpass, gaincal G
   (solint int), applycal; tclean of its CORRECTED_DATA (same size, cell, Briggs 0);
4. WSClean 3.1 with ``-use-wgridder`` (ducc0's w-gridder, as labpipe), two rows, like for like:
   (a) on the same averaged visibilities labpipe grids: CORRECTED_DATA averaged by ``chan_average``
       (4) channels with CASA ``split`` (its time reported apart), against labpipe's default;
   (b) on all 768 channels of CORRECTED_DATA, against labpipe with ``chan_average=1``;
   same image size, cell, Briggs 0, niter, mgain 0.8, auto-threshold 3, epsilon 1e-4 for both.
   ``--wsclean-default-gridder`` adds the old row (WSClean's default gridder on all channels).

Accuracy: the relative error of the recovered per-antenna Jones terms (K BP G) against the truth
(reference phase removed), with the thermal expectation; catalog sources' flux ratio and offset in
each imager's primary-beam-corrected image (the same beam model and QA code for all). CASA runs in
a subprocess (``~/.casa/config.py`` offline, see ``_casa_config``). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CASA_CONFIG = """# written by labpipe's radio benchmark: CASA offline
measures_auto_update = False
data_auto_update = False
measurespath = "{measures}"
"""


def _casa_config() -> str:
    """Make CASA run offline: no auto-updates, python-casacore's bundled measures (keeps an existing config)."""
    import casacore

    config = Path.home() / ".casa" / "config.py"
    if config.exists():
        return f"kept {config}"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(CASA_CONFIG.format(measures=Path(casacore.__file__).parent / "data"))
    return f"wrote {config}"


def _round(value, digits: int = 2):
    return round(value, digits) if isinstance(value, (int, float)) else None


def _jones_error(layout, chain, truth, noise_hint: float) -> dict:
    """Median/95th-percentile |J_est / J_true - 1| with the reference antenna's phase removed."""
    est = np.concatenate(
        [chain.jones(u, layout.spw_freqs[u.spw], layout.times_mjd, 2, layout.n_ant)[0] for u in layout.units], axis=1
    )  # (times, chans, pols, ants)
    est = est[..., np.asarray(truth.antenna_numbers)]  # MS antenna rows are antenna numbers (row 0 unused)
    true = np.transpose(truth.jones(), (1, 2, 3, 0))
    if true.shape != est.shape:
        raise RuntimeError(f"truth {true.shape} vs solutions {est.shape}")
    ratio = est / true
    ratio = ratio * np.conj(ratio[..., :1]) / np.abs(ratio[..., :1])
    err = np.abs(ratio - 1)
    return {"median": float(np.nanmedian(err)), "p95": float(np.nanpercentile(err, 95)), "expected": noise_hint}


def _read_casa_table(path: Path, kind: str, layout):
    """A CASA-written table as ``Solutions``, read with casacore (pyuvdata would look the site up online)."""
    from casacore import tables
    from labpipe.radio.calibrate import Solutions

    with tables.table(str(path), ack=False) as t:
        column = "FPARAM" if kind == "K" else "CPARAM"
        values, flags = t.getcol(column), t.getcol("FLAG")  # (rows, chans, pols)
        times, ants = t.getcol("TIME") / 86400.0, t.getcol("ANTENNA1")
    utimes = np.unique(times)
    ti = np.searchsorted(utimes, times)
    n_chan, n_pol = values.shape[1], values.shape[2]
    out = np.full((len(utimes), n_chan, n_pol, layout.n_ant), np.nan, dtype=values.dtype)
    bad = np.ones(out.shape, dtype=bool)
    out[ti, :, :, ants] = values
    bad[ti, :, :, ants] = flags
    if kind == "K":
        vals, fl = out[0, 0][None] * 1e-9, bad[0, 0][None]  # ns -> s, (1, pols, ants)
    elif kind == "BP":
        vals, fl = out[0], bad[0]  # (chans, pols, ants)
    else:
        vals, fl = out[:, 0], bad[:, 0]  # (times, pols, ants)
    return Solutions(
        kind=kind, values=np.where(fl, np.nan, vals), flags=fl, snr=np.zeros(vals.shape), times_mjd=utimes,
        freqs=layout.all_freqs, spw_freqs=layout.spw_freqs, ant_names=layout.ant_names, feeds=layout.feeds,
        refant=0, interval_s=layout.integration_s,
    )  # fmt: skip


def _wsclean(ms: Path, out: Path, npix: int, cell_arcsec: float, threads: int, timeout: float,
             column: str = "CORRECTED_DATA", wgridder: bool = True) -> float:  # fmt: skip
    cmd = [
        "wsclean", "-quiet", "-size", str(npix), str(npix), "-scale", f"{cell_arcsec}asec",
        "-weight", "briggs", "0", "-niter", "20000", "-auto-threshold", "3", "-mgain", "0.8",
        "-data-column", column, "-pol", "I", "-j", str(threads), "-no-update-model-required",
        *(["-use-wgridder", "-wgridder-accuracy", "1e-4"] if wgridder else []),
        "-name", str(out), str(ms),
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    return time.perf_counter() - t0


CASA_SCRIPT = r"""
import json, sys, time
from casatasks import applycal, bandpass, gaincal, tclean
ms, out, npix, cell, refant = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
t = {}
t0 = time.perf_counter()
gaincal(vis=ms, caltable=out + ".K", gaintype="K", solint="inf", refant=refant, minsnr=2)
t["gaincal_K_s"] = time.perf_counter() - t0; t1 = time.perf_counter()
bandpass(vis=ms, caltable=out + ".B", solint="inf", combine="scan", refant=refant, solnorm=True, gaintable=[out + ".K"])
t["bandpass_s"] = time.perf_counter() - t1; t2 = time.perf_counter()
gaincal(vis=ms, caltable=out + ".G", gaintype="G", calmode="ap", solint="int", refant=refant,
        gaintable=[out + ".K", out + ".B"])
t["gaincal_G_s"] = time.perf_counter() - t2; t3 = time.perf_counter()
applycal(vis=ms, gaintable=[out + ".K", out + ".B", out + ".G"], calwt=False, flagbackup=False)
t["applycal_s"] = time.perf_counter() - t3
t["calibrate_s"] = time.perf_counter() - t0
if npix > 0:
    t4 = time.perf_counter()
    tclean(vis=ms, imagename=out + ".tclean", datacolumn="corrected", imsize=[npix, npix], cell=f"{cell}arcsec",
           weighting="briggs", robust=0.0, niter=20000, threshold="0mJy", nsigma=3.0, cycleniter=-1,
           gain=0.1, cyclefactor=1.0, pbcor=False, gridder="standard", deconvolver="hogbom")
    t["tclean_s"] = time.perf_counter() - t4
print("CASAJSON" + json.dumps(t))
"""


SPLIT_SCRIPT = r"""
import sys, time
from casatasks import split
t0 = time.perf_counter()
split(vis=sys.argv[1], outputvis=sys.argv[2], datacolumn="corrected", width=int(sys.argv[3]), keepflags=True)
print("SPLITSECONDS %.3f" % (time.perf_counter() - t0))
"""


def _casa_split(ms: Path, out: Path, width: int) -> float:
    """CORRECTED_DATA averaged by ``width`` channels into ``out`` (its DATA) with CASA ``split``; seconds."""
    _casa_config()  # offline, before CASA's first import
    proc = subprocess.run([sys.executable, "-c", SPLIT_SCRIPT, str(ms), str(out), str(width)],
                          capture_output=True, text=True, timeout=3600)  # fmt: skip
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("SPLITSECONDS")), None)
    if line is None:
        raise RuntimeError(f"CASA split failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return float(line.split()[1])


def _casa(ms: Path, prefix: Path, npix: int, cell: float, refant: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CASA_SCRIPT, str(ms), str(prefix), str(npix), str(cell), refant],
        capture_output=True, text=True, cwd=prefix.parent, timeout=3600,
    )  # fmt: skip
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("CASAJSON")), None)
    if line is None:
        raise RuntimeError(f"CASA failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(line.removeprefix("CASAJSON"))


def _measure(image_fits: Path, pb_image_fits: Path, residual_fits: Path | None, expected, qa_settings) -> dict:
    """Flux ratios and offsets of catalog sources in an image from any imager, PB-corrected with labpipe's beam."""
    from astropy.io import fits
    from labpipe.radio import qa
    from labpipe.radio.imaging import read_fits_image, robust_rms
    from scipy import ndimage

    image, wcs, header = read_fits_image(image_fits)
    pb, pb_wcs, _ = read_fits_image(pb_image_fits)
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    ra, dec = wcs.pixel_to_world_values(xx, yy)
    px, py = pb_wcs.world_to_pixel_values(ra, dec)
    pb_here = ndimage.map_coordinates(pb, [py, px], order=1, cval=0.0)
    tmp = Path(tempfile.mkdtemp(prefix="lp-bench-qa-"))
    pbcor = np.where(pb_here >= 0.1, image / np.maximum(pb_here, 1e-6), np.nan)
    h = wcs.to_header()
    for key in ("BMAJ", "BMIN", "BPA"):
        h[key] = header[key]
    fits.PrimaryHDU(pbcor.astype(np.float32), header=h).writeto(tmp / "pbcor.fits")
    fits.PrimaryHDU(pb_here.astype(np.float32), header=h).writeto(tmp / "pb.fits")
    residual = read_fits_image(residual_fits)[0] if residual_fits else image
    rms = robust_rms(residual, pb_here >= 0.2)
    beam = float(np.sqrt(header["BMAJ"] * header["BMIN"]))
    rows = qa.measure_sources(tmp / "pbcor.fits", tmp / "pb.fits", expected, rms, beam, qa_settings)
    shutil.rmtree(tmp, ignore_errors=True)
    ratios = np.array([r["flux_ratio"] for r in rows])
    return {
        "n_sources": len(rows),
        "flux_error_rel": float(np.median(np.abs(ratios - 1))) if rows else float("nan"),
        "flux_ratio_median": float(np.median(ratios)) if rows else float("nan"),
        "offset_beams_median": float(np.median([r["offset_beams"] for r in rows])) if rows else float("nan"),
        "rms_mjy": rms * 1e3,
        "beam_arcsec": [header["BMAJ"] * 3600, header["BMIN"] * 3600],
    }


def _wsclean_rows(args, figures: dict, work: Path, ms: Path, layout, settings, result, paths, field) -> None:
    """WSClean with the w-gridder on labpipe's averaged visibilities and on all channels; the old row on request."""
    if not shutil.which("wsclean"):
        figures["wsclean_error"] = "wsclean not installed (Debian package wsclean)"
        return
    npix, cell, threads = result.npix, result.cell_deg * 3600, os.cpu_count() or 1
    width = settings.imaging.chan_average
    rows = []
    if width > 1:
        averaged = work / f"avg{width}.ms"
        try:
            figures["casa_split_s"] = _casa_split(ms, averaged, width)
            rows.append(("wsclean_wgridder", averaged, "DATA", True))
        except Exception as exc:  # no CASA: the averaged row is missing, the rest still runs
            figures["wsclean_wgridder_error"] = f"CASA split: {str(exc)[-500:]}"
    rows.append(("wsclean_wgridder_all_channels", ms, "CORRECTED_DATA", True))
    if args.wsclean_default_gridder:
        rows.append(("wsclean_default_all_channels", ms, "CORRECTED_DATA", False))
    for name, data, column, wgridder in rows:
        out = work / name
        try:
            figures[f"{name}_image_s"] = _wsclean(
                data, out, npix, cell, threads, args.wsclean_timeout, column, wgridder
            )
            figures[name] = _measure(Path(f"{out}-image.fits"), paths["pb"], Path(f"{out}-residual.fits"), field,
                                     settings.qa)  # fmt: skip
        except subprocess.CalledProcessError as exc:
            figures[f"{name}_error"] = (exc.stderr or exc.stdout or "")[-500:]
        except subprocess.TimeoutExpired:
            figures[f"{name}_error"] = f"did not finish within {args.wsclean_timeout} s"


def main() -> None:  # noqa: PLR0915 - one linear benchmark script
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--antennas", type=int, default=96)
    parser.add_argument("--work", type=Path, default=None, help="Working folder (default: a temporary one).")
    parser.add_argument("--no-casa", action="store_true")
    parser.add_argument("--no-wsclean", action="store_true")
    parser.add_argument("--no-tclean", action="store_true", help="CASA calibration only.")
    parser.add_argument("--wsclean-timeout", type=float, default=2400.0)
    parser.add_argument("--max-npix", type=int, default=2048, help="Image size limit for every imager.")
    parser.add_argument("--no-all-channels", action="store_true", help="Skip labpipe's all-768-channel row.")
    parser.add_argument("--wsclean-default-gridder", action="store_true", help="Also WSClean's default gridder.")
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")

    from labpipe.compute import DaskSettings, dask_client
    from labpipe.radio import calibrate, calrun, caltable, imaging, qa, simulate, skymodel
    from labpipe.radio.convert import convert_group
    from labpipe.radio.ms import add_column, read_layout
    from labpipe.radio.products import json_safe

    work = args.work or Path(tempfile.mkdtemp(prefix="lp-radiocal-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"antennas": args.antennas, "cores": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    print(f"working in {work}", flush=True)

    t0 = time.perf_counter()
    group = simulate.simulate_group(work / "incoming", n_antennas=args.antennas, data_dtype="complex64",
                                    truth_dir=work / "truth", seed=2)  # fmt: skip
    figures["simulate_s"] = time.perf_counter() - t0
    truth = simulate.load_truth(group.truth)
    catalog_path = group.catalog or (work / "truth" / "catalog.csv")
    print(f"simulated {group.group_id}: {len(truth.sources)} sources, {figures['simulate_s']:.0f} s", flush=True)

    settings = calrun.RadioCalSettings()
    settings.calibration.sky.catalog = catalog_path
    settings.imaging.max_npix = args.max_npix
    radio = work / "radio"
    ms = radio / "ms" / "science" / group.group_id[:10] / f"{group.group_id}.ms"
    with dask_client(DaskSettings()) as client:
        t_conv = time.perf_counter()
        convert_group(sorted(group.files.values()), ms, client=client)
        figures["labpipe_convert_s"] = time.perf_counter() - t_conv
        print(f"converted in {figures['labpipe_convert_s']:.1f} s", flush=True)
        raw = work / "raw.ms"
        shutil.copytree(ms, raw)  # CASA's copy: before labpipe adds columns (not timed)

    with calibrate.calibration_client() as client:  # what the flows use on one host: Dask threads
        t_cal = time.perf_counter()
        layout = read_layout(ms, settings.calibration.channels_per_unit)
        catalog = skymodel.read_catalog(catalog_path)
        solution = calibrate.solve_group(layout, catalog, settings.calibration, client=client)
        t_solved = time.perf_counter()
        tables_dir = work / "tables"
        for sol in (solution.k, solution.bp, solution.g):
            caltable.write_table(sol, layout, tables_dir / f"{group.group_id}_24h.{caltable.SUFFIX[sol.kind]}")
        chain = calibrate.CalChain(k=solution.k, bp=solution.bp, g=[solution.g])
        calibrate.apply_chain(layout, chain)
        figures["labpipe_calibrate_s"] = time.perf_counter() - t_cal
        figures["labpipe_solve_s"] = t_solved - t_cal
        t_model = time.perf_counter()
        calibrate.write_model(layout, solution)  # MODEL_DATA, for CASA's solves (labpipe does not need it)
        figures["labpipe_write_model_s"] = time.perf_counter() - t_model
        calrun._cleanup(solution)
    print(f"calibrated in {figures['labpipe_calibrate_s']:.1f} s ({solution.timings})", flush=True)

    apparent = float(solution.field.apparent.mean(axis=(1, 2)).sum())
    sigma = float(truth.noise_sigma_jy) * np.sqrt(2)  # complex noise per visibility
    expected = sigma / (apparent * np.sqrt(layout.n_ant - 1) * np.sqrt(len(layout.times_mjd)))
    figures["labpipe_jones_error"] = _jones_error(layout, chain, truth, expected)
    # the solver's own noise figure: 1/SNR from the Fisher information of each BP channel (every baseline's |M|)
    bp_snr = solution.bp.snr[~solution.bp.flags]
    figures["bp_inverse_snr_median"] = float(np.median(1 / bp_snr[bp_snr > 0])) if bp_snr.size else None
    figures["model_sources"] = len(solution.field.catalog)
    figures["model_apparent_jy"] = apparent

    t_img = time.perf_counter()
    result = imaging.clean_image(layout, settings.imaging, settings.calibration.sky)
    prefix = work / "images" / group.group_id
    paths = imaging.write_fits(result, layout, prefix)
    figures["labpipe_image_s"] = time.perf_counter() - t_img
    figures["end_to_end_s"] = figures["labpipe_convert_s"] + figures["labpipe_calibrate_s"] + figures["labpipe_image_s"]
    sky_all = settings.calibration.sky.model_copy(
        update={"max_sources": 100000, "min_beam": 0.05, "min_apparent_jy": 0}
    )
    field = skymodel.select_sources(catalog, layout.ra0_deg, layout.dec0_deg, layout.times_mjd, layout.all_freqs,
                                    layout.location(), sky_all)  # fmt: skip
    metrics = qa.image_metrics(paths, field, settings.qa)
    figures["labpipe_image"] = {
        "npix": result.npix, "cell_arcsec": result.cell_deg * 3600, "components": result.n_components,
        "major_cycles": result.n_major, "n_sources": metrics["n_sources"],
        "flux_error_rel": metrics["flux_error_median"],
        "flux_ratio_median": metrics["flux_ratio_median"], "offset_beams_median": metrics["offset_beams_median"],
        "rms_mjy": metrics["rms_jy"] * 1e3, "dynamic_range": metrics["dynamic_range"], "timings": result.timings,
    }  # fmt: skip
    fig = qa.qa_figure(paths, metrics, group.group_id)
    qa.write_qa(metrics, fig, work / "qa", group.group_id)
    print(f"imaged in {figures['labpipe_image_s']:.1f} s: {figures['labpipe_image']}", flush=True)

    if not args.no_wsclean:
        _wsclean_rows(args, figures, work, ms, layout, settings, result, paths, field)
        print(f"wsclean: { {k: v for k, v in figures.items() if k.startswith('wsclean')} }", flush=True)

    if not args.no_all_channels:  # labpipe's second row: all 768 channels, as WSClean's second row
        all_channels = settings.imaging.model_copy(update={"chan_average": 1})
        t_all = time.perf_counter()
        result_all = imaging.clean_image(layout, all_channels, settings.calibration.sky)
        paths_all = imaging.write_fits(result_all, layout, work / "images-all" / group.group_id)
        figures["labpipe_image_all_channels_s"] = time.perf_counter() - t_all
        metrics_all = qa.image_metrics(paths_all, field, settings.qa)
        figures["labpipe_image_all_channels"] = {
            "flux_error_rel": metrics_all["flux_error_median"],
            "offset_beams_median": metrics_all["offset_beams_median"],
            "n_sources": metrics_all["n_sources"], "components": result_all.n_components,
            "major_cycles": result_all.n_major, "timings": result_all.timings,
        }  # fmt: skip
        print(f"labpipe, all channels: {figures['labpipe_image_all_channels_s']:.1f} s", flush=True)

    if not args.no_casa:
        figures["casa_config"] = _casa_config()
        from casacore import tables

        # CASA solves against a model: the same MODEL_DATA labpipe predicted (what ft() of a component list gives)
        with tables.table(str(ms), ack=False) as t, tables.table(str(raw), readonly=False, ack=False) as r:
            add_column(r, "MODEL_DATA")
            r.putcol("MODEL_DATA", t.getcol("MODEL_DATA"))
        with tables.table(str(raw / "OBSERVATION"), readonly=False, ack=False) as obs:
            obs.putcol("TELESCOPE_NAME", np.array(["OVRO_MMA"] * obs.nrows()))  # CASA knows OVRO, not DSA_110
        try:
            refant = layout.ant_names[int(np.nonzero(layout.present)[0][0])]  # labpipe's reference too
            casa = _casa(raw, work / "casa", 0 if args.no_tclean else result.npix, result.cell_deg * 3600, refant)
            figures["casa"] = casa
            figures["casa_calibrate_s"] = casa["calibrate_s"]
            casa_chain = calibrate.CalChain(
                k=_read_casa_table(work / "casa.K", "K", layout), bp=_read_casa_table(work / "casa.B", "BP", layout),
                g=[_read_casa_table(work / "casa.G", "G", layout)],
            )  # fmt: skip
            figures["casa_jones_error"] = _jones_error(layout, casa_chain, truth, expected)
            if not args.no_tclean:
                figures["casa_tclean_s"] = casa["tclean_s"]
                from casacore.images import image as casa_image

                for kind in ("image", "residual"):
                    casa_image(str(work / f"casa.tclean.{kind}")).tofits(str(work / f"casa-{kind}.fits"))
                figures["casa_image"] = _measure(work / "casa-image.fits", paths["pb"], work / "casa-residual.fits",
                                                 field, settings.qa)  # fmt: skip
        except Exception as exc:  # report the peer's failure, keep labpipe's figures
            figures["casa_error"] = str(exc)[-1500:]
        print(f"casa: {figures.get('casa', figures.get('casa_error'))}", flush=True)

    figures["load_avg_end"] = os.getloadavg()[0]
    summary = {
        "labpipe_calibrate_s": round(figures["labpipe_calibrate_s"], 2),
        "casa_calibrate_s": round(figures["casa_calibrate_s"], 2) if "casa_calibrate_s" in figures else None,
        "labpipe_image_s": round(figures["labpipe_image_s"], 2),
        "wsclean_wgridder_image_s": _round(figures.get("wsclean_wgridder_image_s")),
        "wsclean_wgridder_flux_error_rel": figures.get("wsclean_wgridder", {}).get("flux_error_rel"),
        "wsclean_wgridder_offset_beams": figures.get("wsclean_wgridder", {}).get("offset_beams_median"),
        "casa_split_s": _round(figures.get("casa_split_s")),
        "labpipe_image_all_channels_s": _round(figures.get("labpipe_image_all_channels_s")),
        "labpipe_all_channels_flux_error_rel": figures.get("labpipe_image_all_channels", {}).get("flux_error_rel"),
        "labpipe_all_channels_offset_beams": figures.get("labpipe_image_all_channels", {}).get("offset_beams_median"),
        "wsclean_wgridder_all_channels_image_s": _round(figures.get("wsclean_wgridder_all_channels_image_s")),
        "wsclean_wgridder_all_channels_flux_error_rel": figures.get("wsclean_wgridder_all_channels", {}).get(
            "flux_error_rel"
        ),
        "wsclean_wgridder_all_channels_offset_beams": figures.get("wsclean_wgridder_all_channels", {}).get(
            "offset_beams_median"
        ),
        "wsclean_default_all_channels_image_s": _round(figures.get("wsclean_default_all_channels_image_s")),
        "casa_tclean_s": round(figures["casa_tclean_s"], 2) if "casa_tclean_s" in figures else None,
        "labpipe_convert_s": round(figures["labpipe_convert_s"], 2),
        "end_to_end_s": round(figures["end_to_end_s"], 2),
        "gain_error_rel": round(figures["labpipe_jones_error"]["median"], 5),
        "gain_error_expected": round(expected, 5),
        "bp_inverse_snr_median": round(figures["bp_inverse_snr_median"] or float("nan"), 5),
        "casa_gain_error_rel": round(figures["casa_jones_error"]["median"], 5)
        if "casa_jones_error" in figures
        else None,
        "flux_error_rel": round(figures["labpipe_image"]["flux_error_rel"], 4),
        "casa_flux_error_rel": figures.get("casa_image", {}).get("flux_error_rel"),
        "offset_beams_median": round(figures["labpipe_image"]["offset_beams_median"], 4),
        "n_sources": figures["labpipe_image"]["n_sources"],
        "antennas": args.antennas,
        "load_avg": [round(figures["load_avg_start"], 1), round(figures["load_avg_end"], 1)],
    }
    (work / "figures.json").write_text(json.dumps(figures, indent=1, default=str))
    print(json.dumps(json_safe(summary)))  # null, not NaN, for a figure with nothing to measure


if __name__ == "__main__":
    main()
