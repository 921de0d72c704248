"""Benchmark: one full-size DSA-110 group from the arrival of its last subband to flagged, calibrated, imaged,
sources found and photometry recorded, on this machine; the peers' sum for the same steps beside it.

Run alone: ``flock /tmp/labpipe-bench.lock .venv/bin/python tests/bench/radio_realtime.py`` (``--antennas
24 --history 6`` for a quick run). What happens:

1. (not timed) A field near the meridian at Dec 55 (NVSS-like sky) with two extra sources: one that
   varies from day to day (30 %) and one in an ESE-like dip (40 % deep, 3 days wide), and the
   simulator's RFI (narrow-band emitters, broadband bursts, a faulty input). The group's 16 subband
   files are written; the clock starts when the last one is in place.
2. (timed, labpipe) convert -> flag (AOFlagger, ``labpipe.radio.flagging``) -> calibrate (K+BP+G,
   tables, apply) -> image (ducc0 w-gridder, CLEAN, FITS) -> sources and photometry
   (``labpipe.radio.science.process_image``: PyBDSF, catalogue, forced photometry, variability).
   Before the last step, ``--history`` earlier days of the same field are put through the science
   steps as image-plane epochs (``simulate_image`` with this image's beam, cell and noise; not timed),
   so the master list and light curves exist as they would in the lab.
3. Accuracy beside the times: AOFlagger's recall and false positives against the injected RFI; the
   Jones error against the true gains with and without flagging; the flux error of catalog sources
   (QA code); the forced-photometry error against the true beam-weighted fluxes; the variable and
   the ESE found, steady sources wrongly flagged.
4. Peers on the same data (same steps): pyuvdata's conversion (``UVData.from_file`` + ``write_ms``),
   CASA ``flagdata`` (tfcrop then rflag) scored against the same truth, CASA calibration (gaincal K,
   bandpass, gaincal G, applycal), WSClean 3.1 ``-use-wgridder`` on labpipe's calibrated data averaged
   as labpipe grids it (CASA ``split``), and the same science step (PyBDSF is the peer there).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

START = dt.datetime(2025, 10, 13, 13, 28, 3)
DEC = 55.0


def _calbench():
    """The calibrate-and-image benchmark's helpers (CASA, WSClean, Jones error, image measurement)."""
    path = Path(__file__).with_name("radio_calibrate_image.py")
    spec = importlib.util.spec_from_file_location("radio_calibrate_image", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sky(history: int, seed: int = 2):
    """The calibrate benchmark's field (seed 2) plus a day-to-day variable and an ESE dip; (sources, epochs, names)."""
    import astropy.units as u
    from astropy.coordinates import HADec, SkyCoord
    from astropy.time import Time
    from labpipe.radio import instrument as inst
    from labpipe.radio import simulate

    mid = Time(START, scale="utc") + inst.GROUP_SECONDS / 2 * u.s
    meridian = SkyCoord(ha=0 * u.deg, dec=DEC * u.deg, frame=HADec(obstime=mid, location=inst.site_location()))
    lst = float(meridian.transform_to("icrs").ra.deg)  # the ICRS RA on the meridian at mid-group
    epochs = float(mid.mjd) - np.arange(history, -1, -1)  # one a day, the group last
    sources = simulate.nvss_like_catalog((lst - 8, lst + 8), (DEC - 6, DEC + 6), seed=seed + 1000)
    cos = math.cos(math.radians(DEC))
    variable = simulate.variable_lightcurve(epochs, modulation=0.3, seed=seed)
    ese = simulate.ese_lightcurve(epochs, centre_mjd=float(epochs[history // 2]), fwhm_days=3.0, depth=0.4)
    sources.append(simulate.Source("VARIABLE", lst + 0.35 / cos, DEC + 0.25, 0.15, lightcurve=variable))
    sources.append(simulate.Source("ESE", lst - 0.4 / cos, DEC - 0.3, 0.15, lightcurve=ese))
    return sources, epochs, ("VARIABLE", "ESE")


def _open_db(work: Path):
    from labpipe.db.connect import LabDatabase
    from labpipe.db.embedded import EmbeddedPostgres

    server = EmbeddedPostgres(work / "pg")
    return server, LabDatabase(server.start(), work / "blobs", prefix="bench")


def _expected_fluxes(sources, mjd: float, layout, sky_settings):
    """Beam-weighted true fluxes (what a PB-corrected image measures) of every source in the field at ``mjd``."""
    from labpipe.radio import skymodel

    catalog = skymodel.Catalog(
        name=np.array([s.name for s in sources]), ra_deg=np.array([s.ra_deg for s in sources]),
        dec_deg=np.array([s.dec_deg for s in sources]),
        flux_jy=np.array([s.flux_jy * s.flux_scale(mjd) for s in sources]),
        alpha=np.array([s.spectral_index for s in sources]), ref_freq_hz=np.array([s.ref_freq_hz for s in sources]),
    )  # fmt: skip
    every = sky_settings.model_copy(update={"max_sources": 100000, "min_beam": 0.05, "min_apparent_jy": 0})
    return skymodel.select_sources(catalog, layout.ra0_deg, layout.dec0_deg, layout.times_mjd, layout.all_freqs,
                                   layout.location(), every)  # fmt: skip


def _photometry_error(db, image_id: str, field, result) -> dict:
    """Forced fluxes of this image against the truth, for master sources matched to a true source at SNR > 20."""
    from labpipe.radio import catalogue

    t = catalogue.tables(db)
    rows = (t.ForcedFlux & {"image_id": image_id}).to_dicts()
    masters = {m["source_id"]: m for m in catalogue.master_sources(db)}
    expected = field.beam_weighted_flux()
    errors = []
    for r in rows:
        m = masters[r["source_id"]]
        sep = np.hypot((field.catalog.ra_deg - m["ra_deg"]) * math.cos(math.radians(m["dec_deg"])),
                       field.catalog.dec_deg - m["dec_deg"]) * 3600  # fmt: skip
        k = int(np.argmin(sep))
        if sep[k] < 0.3 * result.beam_deg[0] * 3600 and r["flux_jy"] > 20 * r["flux_err_jy"] and r["pb"] > 0.3:
            errors.append(abs(r["flux_jy"] - expected[k]) / expected[k])
    return {"n": len(errors), "median": float(np.median(errors)) if errors else float("nan"),
            "p90": float(np.percentile(errors, 90)) if errors else float("nan")}  # fmt: skip


def _casa_flagdata(ms: Path) -> float:
    """CASA flagdata tfcrop then rflag (their defaults) on ``ms`` in a subprocess; seconds."""
    import subprocess

    script = (
        "import sys, time\nfrom casatasks import flagdata\nt0 = time.perf_counter()\n"
        "flagdata(vis=sys.argv[1], mode='tfcrop', flagbackup=False)\n"
        "flagdata(vis=sys.argv[1], mode='rflag', flagbackup=False)\n"
        "print('FLAGSECONDS %.3f' % (time.perf_counter() - t0))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(ms)], capture_output=True, text=True, timeout=7200,
                          cwd=ms.parent)  # fmt: skip
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("FLAGSECONDS")), None)
    if line is None:
        raise RuntimeError(f"CASA flagdata failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return float(line.split()[1])


def _pyuvdata_convert(files, out: Path) -> float:
    import warnings

    from pyuvdata import UVData

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uv = UVData.from_file([str(f) for f in files], file_type="uvh5")
        uv.phase_to_time(uv.time_array.mean())
        uv.write_ms(str(out), clobber=True)
    return time.perf_counter() - t0


def _calibrate(ms: Path, catalog_path: Path, settings, tables_dir: Path, group: str):
    """labpipe's calibration step as the flows run it on one host; (seconds, layout, chain)."""
    from labpipe.radio import calibrate, calrun, caltable, skymodel
    from labpipe.radio.ms import read_layout

    with calibrate.calibration_client() as client:
        t0 = time.perf_counter()
        layout = read_layout(ms, settings.calibration.channels_per_unit)
        solution = calibrate.solve_group(layout, skymodel.read_catalog(catalog_path), settings.calibration,
                                         client=client)  # fmt: skip
        for sol in (solution.k, solution.bp, solution.g):
            caltable.write_table(sol, layout, tables_dir / f"{group}_24h.{caltable.SUFFIX[sol.kind]}")
        chain = calibrate.CalChain(k=solution.k, bp=solution.bp, g=[solution.g])
        calibrate.apply_chain(layout, chain)
        seconds = time.perf_counter() - t0
        calibrate.write_model(layout, solution)  # MODEL_DATA for CASA's solves (not timed; labpipe needs none)
        calrun._cleanup(solution)
    return seconds, layout, chain


def main() -> None:  # noqa: PLR0915 - one linear benchmark script
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--antennas", type=int, default=96)
    parser.add_argument("--history", type=int, default=14, help="Earlier daily epochs (image plane, not timed).")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--max-npix", type=int, default=2048)
    parser.add_argument("--mgain", type=float, default=None, help="CLEAN mgain (default: labpipe's).")
    parser.add_argument("--epsilon", type=float, default=None, help="Gridder accuracy (default: labpipe's).")
    parser.add_argument("--max-major", type=int, default=None)
    parser.add_argument("--no-casa", action="store_true")
    parser.add_argument("--no-wsclean", action="store_true")
    parser.add_argument("--no-peer-convert", action="store_true")
    parser.add_argument("--no-unflagged", action="store_true", help="Skip the calibration without flags.")
    args = parser.parse_args()
    os.environ.setdefault("MPLBACKEND", "Agg")

    from labpipe.compute import DaskSettings, dask_client
    from labpipe.radio import calrun, catalogue, flagging, imaging, qa, science, simulate, skymodel, variability
    from labpipe.radio.catalogue import Reference
    from labpipe.radio.convert import convert_group
    from labpipe.radio.ms import add_column
    from labpipe.radio.products import json_safe

    bench = _calbench()
    work = args.work or Path(tempfile.mkdtemp(prefix="lp-realtime-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    fig: dict = {"antennas": args.antennas, "cores": os.cpu_count(), "load_avg_start": list(os.getloadavg())}
    print(f"working in {work}; load {fig['load_avg_start']}", flush=True)

    sources, epochs, (variable_name, ese_name) = _sky(args.history)
    catalog_path = simulate.write_catalog(sources, work / "catalog.csv")
    arrivals = []
    t0 = time.perf_counter()
    group = simulate.simulate_group(work / "incoming", START, n_antennas=args.antennas, catalog=sources,
                                    rfi=simulate.RfiInjection(), data_dtype="complex64", truth_dir=work / "truth",
                                    seed=2, on_file=lambda path: arrivals.append(time.perf_counter()))  # fmt: skip
    fig["simulate_s"] = time.perf_counter() - t0
    truth = simulate.load_truth(group.truth)
    print(f"simulated {group.group_id} in {fig['simulate_s']:.0f} s", flush=True)

    settings = calrun.RadioCalSettings()
    settings.calibration.sky.catalog = catalog_path
    settings.imaging.max_npix = args.max_npix
    for name in ("mgain", "epsilon", "max_major"):
        if getattr(args, name) is not None:
            setattr(settings.imaging, name, getattr(args, name))
    ms = work / "radio" / "ms" / "science" / group.group_id[:10] / f"{group.group_id}.ms"
    steps: dict[str, float] = {}

    # ---- the timed chain: last subband in place -> ... -> photometry recorded
    with dask_client(DaskSettings()) as client:
        t = time.perf_counter()
        convert_group(sorted(group.files.values()), ms, client=client)
        steps["convert_s"] = time.perf_counter() - t
    raw = work / "raw.ms"
    shutil.copytree(ms, raw)  # the peers' and the unflagged calibration's copy (not timed)
    print(f"converted in {steps['convert_s']:.1f} s", flush=True)

    t = time.perf_counter()
    flag_report = flagging.flag_ms(ms)
    steps["flag_s"] = time.perf_counter() - t
    score = flagging.score_flags(ms, truth)
    fig["aoflagger"] = {"report": {k: v for k, v in vars(flag_report).items() if k != "antenna_levels"},
                        "score": vars(score)}  # fmt: skip
    print(f"flagged in {steps['flag_s']:.1f} s: {score}", flush=True)

    steps["calibrate_s"], layout, chain = _calibrate(ms, catalog_path, settings, work / "tables", group.group_id)
    sigma = float(truth.noise_sigma_jy) * np.sqrt(2)
    fig["jones_error_flagged"] = bench._jones_error(layout, chain, truth, sigma)
    print(f"calibrated in {steps['calibrate_s']:.1f} s, Jones error {fig['jones_error_flagged']}", flush=True)

    t = time.perf_counter()
    result = imaging.clean_image(layout, settings.imaging, settings.calibration.sky)
    prefix = work / "radio" / "images" / "single" / group.group_id[:10] / group.group_id
    paths = imaging.write_fits(result, layout, prefix)
    steps["image_s"] = time.perf_counter() - t
    fig["image"] = {"npix": result.npix, "cell_arcsec": result.cell_deg * 3600, "major_cycles": result.n_major,
                    "components": result.n_components, "timings": result.timings}  # fmt: skip
    print(f"imaged in {steps['image_s']:.1f} s: {fig['image']}", flush=True)

    # ---- history (not timed): earlier days of this field through the same science steps
    server, db = _open_db(work)
    try:
        reference = Reference.from_catalog(skymodel.read_catalog(catalog_path))
        sci = science.RadioScienceSettings()
        bmaj, bmin, bpa = result.beam_deg
        t = time.perf_counter()
        for k, mjd in enumerate(epochs[:-1]):
            image = simulate.simulate_image(
                work / "history" / f"day{k:02d}", sources, ra0_deg=layout.ra0_deg, dec0_deg=layout.dec0_deg,
                mjd=float(mjd), npix=min(1024, result.npix), cell_arcsec=result.cell_deg * 3600,
                beam_arcsec=(bmaj * 3600, bmin * 3600, bpa), noise_jy=result.rms_jy, freq_hz=result.freq_hz, seed=k,
            )  # fmt: skip
            science.process_image(db, f"day{k:02d}", image.prefix, sci, reference=reference)
        fig["history_s"] = time.perf_counter() - t
        print(f"history of {len(epochs) - 1} days in {fig['history_s']:.0f} s", flush=True)

        t = time.perf_counter()
        report = science.process_image(db, group.group_id, prefix, sci, reference=reference)
        steps["sources_photometry_s"] = time.perf_counter() - t
        fig["science"] = vars(report)
        field = _expected_fluxes(sources, float(epochs[-1]), layout, settings.calibration.sky)
        fig["photometry_error"] = _photometry_error(db, group.group_id, field, result)
        flags = variability.flagged(db)
        masters = {m["source_id"]: m for m in catalogue.master_sources(db)}
        named = _identify(masters, sources)
        injected = {named.get(variable_name), named.get(ese_name)}
        fig["variable_found"] = named.get(variable_name) in flags["variable"]
        fig["ese_found"] = named.get(ese_name) in flags["ese_candidate"]
        fig["false_candidates"] = sorted((set(flags["variable"]) | set(flags["ese_candidate"])) - injected)
        fig["n_master_sources"] = len(masters)
    finally:
        server.stop()
    print(f"sources + photometry in {steps['sources_photometry_s']:.1f} s: {fig['science']}", flush=True)
    fig["steps"] = steps
    end_to_end = sum(steps.values())
    fig["arrival_to_done_s"] = end_to_end  # the files were all in place when conversion started

    expected_all = _expected_fluxes(sources, float(epochs[-1]), layout, settings.calibration.sky)
    metrics = qa.image_metrics(paths, expected_all, settings.qa)
    fig["image_qa"] = {k: metrics[k] for k in ("n_sources", "flux_error_median", "offset_beams_median", "rms_jy")}

    # ---- accuracy without flagging (not timed)
    if not args.no_unflagged:
        unflagged = work / "unflagged.ms"
        shutil.copytree(raw, unflagged)
        _, layout_u, chain_u = _calibrate(unflagged, catalog_path, settings, work / "tables-unflagged", group.group_id)
        fig["jones_error_unflagged"] = bench._jones_error(layout_u, chain_u, truth, sigma)
        shutil.rmtree(unflagged, ignore_errors=True)

    # ---- peers
    peers: dict[str, float] = {}
    if not args.no_peer_convert:
        peers["pyuvdata_convert_s"] = _pyuvdata_convert(sorted(group.files.values()), work / "pyuvdata.ms")
        shutil.rmtree(work / "pyuvdata.ms", ignore_errors=True)
        print(f"pyuvdata convert {peers['pyuvdata_convert_s']:.1f} s", flush=True)
    if not args.no_casa:
        fig["casa_config"] = bench._casa_config()
        from casacore import tables
        from labpipe.radio import calibrate
        from labpipe.radio.ms import add_column

        casa_ms = work / "casa.ms"
        shutil.copytree(raw, casa_ms)
        with tables.table(str(casa_ms / "OBSERVATION"), readonly=False, ack=False) as obs:
            obs.putcol("TELESCOPE_NAME", np.array(["OVRO_MMA"] * obs.nrows()))  # CASA knows OVRO, not DSA_110
        try:
            peers["casa_flagdata_s"] = _casa_flagdata(casa_ms)
            fig["casa_flagdata_score"] = vars(flagging.score_flags(casa_ms, truth))
            print(f"CASA flagdata {peers['casa_flagdata_s']:.1f} s: {fig['casa_flagdata_score']}", flush=True)
            with tables.table(str(ms), ack=False) as src, tables.table(str(casa_ms), readonly=False, ack=False) as dst:
                add_column(dst, "MODEL_DATA")
                dst.putcol("MODEL_DATA", src.getcol("MODEL_DATA"))
            refant = layout.ant_names[int(np.nonzero(layout.present)[0][0])]
            casa = bench._casa(casa_ms, work / "casa", 0, 0.0, refant)
            peers["casa_calibrate_s"] = casa["calibrate_s"]
            casa_chain = calibrate.CalChain(
                k=bench._read_casa_table(work / "casa.K", "K", layout),
                bp=bench._read_casa_table(work / "casa.B", "BP", layout),
                g=[bench._read_casa_table(work / "casa.G", "G", layout)],
            )
            fig["casa_jones_error"] = bench._jones_error(layout, casa_chain, truth, sigma)
        except Exception as exc:  # report the peer's failure, keep labpipe's figures
            fig["casa_error"] = str(exc)[-1500:]
    if not args.no_wsclean and shutil.which("wsclean"):
        try:
            averaged = work / "avg.ms"
            peers["casa_split_s"] = bench._casa_split(ms, averaged, settings.imaging.chan_average)
            peers["wsclean_wgridder_image_s"] = bench._wsclean(averaged, work / "wsclean", result.npix,
                                                               result.cell_deg * 3600, os.cpu_count() or 1, 3600.0,
                                                               "DATA", True)  # fmt: skip
            residual = work / "wsclean-residual.fits"
            fig["wsclean_wgridder"] = bench._measure(work / "wsclean-image.fits", paths["pb"], residual, expected_all,
                                                     settings.qa)  # fmt: skip
        except Exception as exc:
            fig["wsclean_error"] = str(exc)[-1500:]
    peers["sources_photometry_s"] = steps["sources_photometry_s"]  # the same tool (PyBDSF) on both sides
    fig["peers"] = peers
    peer_steps = ("pyuvdata_convert_s", "casa_flagdata_s", "casa_calibrate_s", "casa_split_s",
                  "wsclean_wgridder_image_s", "sources_photometry_s")  # fmt: skip
    complete = all(k in peers for k in peer_steps)
    fig["load_avg_end"] = list(os.getloadavg())
    (work / "figures.json").write_text(json.dumps(json_safe(fig), indent=1, default=str))

    def r(value, digits=2):
        return round(float(value), digits) if isinstance(value, (int, float)) and math.isfinite(value) else None

    summary = {
        "convert_s": r(steps["convert_s"]),
        "flag_s": r(steps["flag_s"]),
        "calibrate_s": r(steps["calibrate_s"]),
        "labpipe_image_s": r(steps["image_s"]),
        "sources_photometry_s": r(steps["sources_photometry_s"]),
        "end_to_end_s": r(end_to_end),
        "target_s": 60.0,
        "aoflagger_recall": r(score.recall, 4),
        "aoflagger_recall_power": r(score.recall_power, 4),
        "aoflagger_false_positive": r(score.false_positive, 4),
        "casa_flagdata_s": r(peers.get("casa_flagdata_s")),
        "casa_flagdata_recall": r(fig.get("casa_flagdata_score", {}).get("recall"), 4),
        "casa_flagdata_false_positive": r(fig.get("casa_flagdata_score", {}).get("false_positive"), 4),
        "gain_error_flagged": r(fig["jones_error_flagged"]["median"], 5),
        "gain_error_unflagged": r(fig.get("jones_error_unflagged", {}).get("median"), 5),
        "casa_gain_error": r(fig.get("casa_jones_error", {}).get("median"), 5),
        "casa_calibrate_s": r(peers.get("casa_calibrate_s")),
        "wsclean_wgridder_image_s": r(peers.get("wsclean_wgridder_image_s")),
        "casa_split_s": r(peers.get("casa_split_s")),
        "pyuvdata_convert_s": r(peers.get("pyuvdata_convert_s")),
        "peers_sum_s": r(sum(peers[k] for k in peer_steps)) if complete else None,
        "image_flux_error_rel": r(metrics["flux_error_median"], 4),
        "wsclean_flux_error_rel": r(fig.get("wsclean_wgridder", {}).get("flux_error_rel"), 4),
        "photometry_error_rel": r(fig["photometry_error"]["median"], 4),
        "photometry_sources": fig["photometry_error"]["n"],
        "variables_found": int(fig["variable_found"]) + int(fig["ese_found"]),
        "variables_injected": 2,
        "false_candidates": len(fig["false_candidates"]),
        "major_cycles": result.n_major,
        "antennas": args.antennas,
        "load_avg": [round(fig["load_avg_start"][0], 1), round(fig["load_avg_end"][0], 1)],
    }
    print(json.dumps(json_safe(summary)))


def _identify(masters: dict, sources) -> dict[str, int]:
    """Master source id of each named source (nearest within 10")."""
    out = {}
    if not masters:
        return out
    ids = list(masters)
    ra = np.array([masters[i]["ra_deg"] for i in ids])
    dec = np.array([masters[i]["dec_deg"] for i in ids])
    for s in sources:
        sep = np.hypot((ra - s.ra_deg) * math.cos(math.radians(s.dec_deg)), dec - s.dec_deg) * 3600
        k = int(np.argmin(sep))
        if sep[k] < 10:
            out[s.name] = ids[k]
    return out


if __name__ == "__main__":
    main()
