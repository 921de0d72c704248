"""The calibration-and-imaging steps of one group, as the flows, the demo and the benchmark run them.

``solve_and_register``: solve a group (24 h: K+BP+G; 1 h: G with the active K and BP), write the
tables to ``ms/calibrators/YYYY-MM-DD/<group>_<cadence>.{kcal,bpcal,gpcal}``, register them behind
the QA gate, catalogue them. ``apply_and_image``: look the calibration up for the group's time
(waiting for registrations in flight), hold the group when nothing valid exists, else apply into
CORRECTED_DATA, image, write FITS, QA metrics and picture, and catalogue everything.
Idempotent: re-running finds the finished products (and re-registers nothing already decided).
Each runs under a server lock of its group (and cadence), so what a killed run left staged beside
the products (``atomic_path``'s ``.<name>.*.part``) is known to be nobody's and is removed first.
"""

from __future__ import annotations

import glob
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.db.connect import LabDatabase
from labpipe.errors import InvalidInput
from labpipe.files import atomic_path
from labpipe.radio import calibrate, calregistry, caltable, imaging, products, qa, skymodel
from labpipe.radio.calibrate import CalChain, CalibrationSettings
from labpipe.radio.calregistry import ValiditySettings
from labpipe.radio.flagging import FlagSettings
from labpipe.radio.imaging import ImagingSettings
from labpipe.radio.ms import MsLayout, read_layout
from labpipe.radio.qa import QaSettings
from labpipe.radio.science import RadioScienceSettings
from pydantic import BaseModel, Field


class RadioCalSettings(BaseModel):
    """Calibration, imaging, QA and validity settings of the radio calibration lifecycle."""

    calibration: CalibrationSettings = Field(
        default_factory=CalibrationSettings, description="Sky model, primary beam and StEFCal solve settings."
    )
    imaging: ImagingSettings = Field(
        default_factory=ImagingSettings, description="Image size, cell, weighting and CLEAN settings."
    )
    qa: QaSettings = Field(
        default_factory=QaSettings,
        description="Image QA: the catalog sources each image is measured against, and the flux and position errors "
        "that pass (a table's gate is in calibration: flagged fraction, SNR, phase scatter).",
    )
    validity: ValiditySettings = Field(
        default_factory=ValiditySettings, description="Validity windows of the 24 h and 1 h tables."
    )
    registration_wait_s: float = Field(120.0, description="How long an apply waits for a registration in flight.")
    flag_rfi: bool = Field(True, description="Flag interference (AOFlagger) once per MS, before solving or imaging.")
    flagging: FlagSettings = Field(
        default_factory=FlagSettings,
        description="AOFlagger levels and thresholds (channels_per_unit follows calibration.channels_per_unit).",
    )
    run_science: bool = Field(True, description="Find sources, catalogue, measure and assess every new image.")
    science: RadioScienceSettings = Field(
        default_factory=RadioScienceSettings,
        description="Source finding, master catalogue, forced photometry, variability and mosaics.",
    )


def group_of(ms: Path) -> str:
    """The group id (ISO timestamp) of an MS named ``<group>.ms`` or ``<group>_24h.ms``."""
    name = Path(ms).name.removesuffix(".ms")
    return name.split("_")[0] if "_" in name and name[:4].isdigit() else name


def date_of(group: str) -> str:
    return group[:10]


def catalog_path(radio_root: Path, settings: RadioCalSettings) -> Path:
    """The sky catalog: the configured file, else ``static/catalogs/nvss.csv`` of the radio tree."""
    if settings.calibration.sky.catalog:
        return Path(settings.calibration.sky.catalog)
    path = Path(radio_root) / "static" / "catalogs" / "nvss.csv"
    if not path.exists():
        raise InvalidInput(path, "no sky catalog", "put an NVSS extract there or set calibration.sky.catalog")
    return path


def flag_report_path(radio_root: Path, group: str) -> Path:
    return qa_dir(radio_root, group) / f"{group}.flags.json"


def table_path(radio_root: Path, group: str, cadence: str, kind: str) -> Path:
    return Path(radio_root) / "ms" / "calibrators" / date_of(group) / f"{group}_{cadence}.{caltable.SUFFIX[kind]}"


def image_prefix(radio_root: Path, group: str) -> Path:
    return Path(radio_root) / "images" / "single" / date_of(group) / group


def qa_dir(radio_root: Path, group: str) -> Path:
    return Path(radio_root) / "images" / "qa" / date_of(group)


@dataclass
class SolveReport:
    group: str
    cadence: str
    tables: dict[str, dict] = field(default_factory=dict)  # kind -> {path, status, reason, qa}
    timings: dict[str, float] = field(default_factory=dict)
    n_sources: int = 0

    @property
    def registered(self) -> bool:
        return bool(self.tables) and all(t["status"] == "active" for t in self.tables.values())


def load_chain(found: calregistry.Lookup) -> CalChain:
    """Read the tables a lookup returned."""
    return CalChain(
        k=caltable.read_table(Path(found.k["path"])) if found.k else None,
        bp=caltable.read_table(Path(found.bp["path"])) if found.bp else None,
        g=[caltable.read_table(Path(r["path"])) for r in found.g],
    )


def _clear_killed_staging(folder: Path, stem: str) -> list[Path]:
    """Remove ``atomic_path`` staging (``.<stem>*.part``) a killed run left in ``folder``.

    Only under the group's server lock: then no live run of this group is writing there.
    """
    removed = sorted(Path(folder).glob(f".{glob.escape(stem)}*.part")) if Path(folder).is_dir() else []
    for staged in removed:
        shutil.rmtree(staged, ignore_errors=True)
    return removed


def solve_and_register(
    db: LabDatabase,
    radio_root: Path,
    ms: Path,
    cadence: str,
    settings: RadioCalSettings,
    *,
    client=None,
    progress: Callable[[int, int], None] | None = None,
    write_model: bool = True,
) -> SolveReport:
    """Solve one group at a cadence ('24h': K+BP+G, '1h': G on the active K+BP), write, QA, register."""
    if cadence not in ("24h", "1h"):
        raise InvalidInput(cadence, "unknown cadence", "use '24h' or '1h'")
    group = group_of(ms)
    with db.server_lock(f"radio caltables {group} {cadence}"):
        _clear_killed_staging(table_path(radio_root, group, cadence, "K").parent, f"{group}_{cadence}.")
        t0 = time.perf_counter()
        layout = read_layout(ms, settings.calibration.channels_per_unit)
        catalog = skymodel.read_catalog(catalog_path(radio_root, settings))
        chain = None
        if cadence == "1h":
            found = calregistry.wait_for_registrations(db, layout.mid_mjd, settings.registration_wait_s)
            if found.bp is None:
                raise InvalidInput(ms, "no active bandpass covers this group", "run the 24 h calibration first")
            chain = load_chain(found)
            chain.g = []
        solution = calibrate.solve_group(
            layout, catalog, settings.calibration, solve="KBPG" if cadence == "24h" else "G",
            chain=chain, client=client, progress=progress,
        )  # fmt: skip
        report = SolveReport(group, cadence, timings=dict(solution.timings), n_sources=len(solution.field.catalog))
        if write_model:
            t1 = time.perf_counter()
            calibrate.write_model(layout, solution)
            report.timings["write_model_s"] = time.perf_counter() - t1
        found_tables = [s for s in (solution.k, solution.bp, solution.g) if s is not None]
        for sol in found_tables:
            path = table_path(radio_root, group, cadence, sol.kind)
            caltable.write_table(sol, layout, path)
            report.tables[sol.kind] = _register(db, layout, sol, path, group, cadence, settings)
            products.record_product(
                db, "caltable", path, start_mjd=float(layout.times_mjd[0]), end_mjd=float(layout.times_mjd[-1]),
                group_id=group, subtype=caltable.SUFFIX[sol.kind], detail={"status": report.tables[sol.kind]["status"]},
            )  # fmt: skip
        _cleanup(solution)
        report.timings["total_s"] = time.perf_counter() - t0
        return report


def _register(db, layout: MsLayout, sol, path: Path, group: str, cadence: str, settings: RadioCalSettings) -> dict:
    solve_mjd = layout.mid_mjd
    start, end = calregistry.window(
        sol.kind, solve_mjd, float(layout.times_mjd[0]), float(layout.times_mjd[-1]), settings.validity
    )
    figures = sol.qa()
    name = path.name
    calregistry.begin_registration(
        db,
        dict(
            table_name=name, kind=sol.kind, cadence=cadence, path=str(path), ms_path=str(layout.path),
            solve_mjd=solve_mjd, valid_start_mjd=start, valid_end_mjd=end,
            flagged_fraction=figures["flagged_fraction"], median_snr=figures["median_snr"],
            phase_scatter_deg=figures["phase_scatter_deg"],
        ),
    )  # fmt: skip
    passed, reason = calibrate.passes_qa(sol, settings.calibration)
    status = calregistry.finish_registration(db, name, passed, reason)
    return {"path": str(path), "status": status, "reason": reason, "qa": figures}


def _cleanup(solution) -> None:
    scratch = getattr(solution, "scratch", None)
    if scratch and Path(scratch).name.startswith("labpipe-cal-"):
        shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class GroupReport:
    group: str
    held: bool = False
    reason: str = ""
    tables: list[str] = field(default_factory=list)
    images: dict[str, str] = field(default_factory=dict)
    qa: dict[str, str] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def apply_and_image(
    db: LabDatabase,
    radio_root: Path,
    ms: Path,
    settings: RadioCalSettings,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> GroupReport:
    """Apply the calibration valid for this group, image it, QA it, catalogue it; hold it if none is valid."""
    group = group_of(ms)
    with db.server_lock(f"radio images {group}"):
        _clear_killed_staging(image_prefix(radio_root, group).parent, f"{group}.")
        _clear_killed_staging(qa_dir(radio_root, group), f"{group}.")
        t0 = time.perf_counter()
        layout = read_layout(ms, settings.calibration.channels_per_unit)
        report = GroupReport(group)
        found = calregistry.wait_for_registrations(db, layout.mid_mjd, settings.registration_wait_s)
        if not found.complete:
            missing = [k for k, v in (("BP", found.bp), ("G", found.g)) if not v]
            report.held, report.reason = True, f"no valid {' and '.join(missing)} table covers MJD {layout.mid_mjd:.5f}"
            calregistry.hold(db, group, str(ms), layout.mid_mjd, report.reason)
            return report
        report.tables = found.paths()
        chain = load_chain(found)
        t1 = time.perf_counter()
        calibrate.apply_chain(layout, chain)
        report.timings["apply_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        result = imaging.clean_image(layout, settings.imaging, settings.calibration.sky, progress=progress)
        paths = imaging.write_fits(result, layout, image_prefix(radio_root, group))
        report.timings["image_s"] = time.perf_counter() - t2
        report.images = {k: str(v) for k, v in paths.items()}
        metrics = _qa(layout, paths, radio_root, settings, result, report)
        report.metrics = metrics
        start, end = float(layout.times_mjd[0]), float(layout.times_mjd[-1])
        products.record_product(db, "ms", ms, start_mjd=start, end_mjd=end, group_id=group, subtype="calibrated",
                                detail={"tables": report.tables})  # fmt: skip
        for kind, path in paths.items():
            detail = {"ra_deg": result.ra0_deg, "dec_deg": result.dec0_deg} if kind == "image.pbcor" else None
            products.record_product(db, "image", path, start_mjd=start, end_mjd=end, group_id=group, subtype=kind,
                                    detail=detail)  # fmt: skip
        for kind, path in report.qa.items():
            summary = {k: metrics[k] for k in ("rms_jy", "dynamic_range", "n_sources", "flux_error_median", "passed")}
            products.record_product(db, "qa", Path(path), start_mjd=start, end_mjd=end, group_id=group, subtype=kind,
                                    detail=summary if kind == "metrics" else None)  # fmt: skip
        if any(g["group_id"] == group for g in calregistry.held_groups(db)):
            calregistry.release(db, group)
        report.timings["total_s"] = time.perf_counter() - t0
        return report


def flag_once(
    db: LabDatabase,
    radio_root: Path,
    ms: Path,
    settings: RadioCalSettings,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Flag interference in ``ms`` (AOFlagger, into FLAG) unless this MS was flagged already; returns the record.

    The run is recorded as a ``qa`` product (subtype ``flags``): its report, written atomically to
    ``images/qa/<date>/<ms name>.flags.json``, names the MS it flagged. A recorded MS is not flagged again
    (``already``: True). A crash between writing FLAG and the record only means a second run, which
    only adds flags (existing flags never come back and are left out of AOFlagger's statistics).
    """
    from labpipe.radio import flagging

    ms = Path(ms)
    if not settings.flag_rfi:
        return {"ms": str(ms), "skipped": "flag_rfi is off"}
    group = group_of(ms)
    report_path = flag_report_path(radio_root, ms.name.removesuffix(".ms"))
    t = calregistry.tables(db)
    done = (t.Product & {"product_id": products.product_id(report_path)}).to_dicts()
    if done and (done[0]["detail"] or {}).get("ms") == str(ms):
        return {**done[0]["detail"], "already": True}
    flag_settings = settings.flagging.model_copy(update={"channels_per_unit": settings.calibration.channels_per_unit})
    report = flagging.flag_ms(ms, flag_settings, progress=progress)
    detail = {
        "ms": str(ms),
        "flagged_before": report.flagged_before,
        "flagged_after": report.flagged_after,
        "bad_antennas": report.bad_antennas,
        "array_cells": report.array_cells,
        "antenna_cells": report.antenna_cells,
        "baseline_cells": report.baseline_cells,
        "seconds": report.timings.get("total_s", 0.0),
    }
    sweep_staging(report_path)
    with atomic_path(report_path) as tmp:
        tmp.write_text(json.dumps(products.json_safe({**detail, "timings": report.timings}), indent=1))
    layout = read_layout(ms, settings.calibration.channels_per_unit)
    products.record_product(db, "qa", report_path, start_mjd=float(layout.times_mjd[0]),
                            end_mjd=float(layout.times_mjd[-1]), group_id=group, subtype="flags",
                            detail=detail)  # fmt: skip
    return {**detail, "already": False}


def science_pending(db: LabDatabase) -> list[str]:
    """Groups with an image whose science step has not finished (failed or killed after imaging), oldest first.

    Finished means its source list is recorded as a ``catalogue`` product, which ``image_science`` does last.
    """

    imaged = [r["group_id"] for r in products.products(db, kind="image") if r["subtype"] == "image" and r["group_id"]]
    done = {r["group_id"] for r in products.products(db, kind="catalogue")}  # recorded last by image_science
    return [g for g in dict.fromkeys(imaged) if g not in done]


def sweep_staging(final: Path) -> list[str]:
    """Remove what a killed writer of ``final`` left beside it: ``atomic_path``'s ``.NAME.*.part`` folders.

    A SIGKILL skips ``atomic_path``'s cleanup; the next writer of the same product sweeps it. A live
    writer of the same name in another process loses its staging and fails its rename (its task is
    retried); it never publishes a partial file.
    """
    import shutil

    final = Path(final)
    removed = []
    for stale in final.parent.glob(f".{final.name}.*.part") if final.parent.is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)
        removed.append(stale.name)
    return removed


def lightcurve_path(radio_root: Path, source_id: int) -> Path:
    return Path(radio_root) / "images" / "lightcurves" / f"source-{int(source_id):06d}.png"


def image_science(
    db: LabDatabase,
    radio_root: Path,
    group: str,
    settings: RadioCalSettings,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """The science steps on a group's image (``science.process_image``), their products recorded.

    The reference catalogue is ``science.reference_catalog``, else the calibration sky model's catalog, else
    ``static/catalogs/nvss.csv``. Records the PyBDSF source list as a ``catalogue`` product and, for every
    source flagged variable or ESE candidate after this image, its light-curve plot
    (``images/lightcurves/source-NNNNNN.png``, written atomically) as a ``lightcurve`` product.
    Idempotent (a finished image is not processed again).
    """
    import matplotlib.pyplot as plt
    from labpipe.radio import catalogue, photometry, science, variability

    if not settings.run_science:
        return {"group": group, "skipped": "run_science is off"}
    prefix = image_prefix(radio_root, group)
    if not Path(f"{prefix}.image.fits").exists():
        raise InvalidInput(f"{prefix}.image.fits", "no image of this group", "image the group first")
    science_settings = settings.science
    if not science_settings.reference_catalog and settings.calibration.sky.catalog:  # the sky model's catalog
        science_settings = science_settings.model_copy(update={"reference_catalog": settings.calibration.sky.catalog})
    reference = science.reference_for(radio_root, science_settings)
    sweep_staging(Path(f"{prefix}.srl.fits"))
    report = science.process_image(db, group, prefix, settings.science, reference=reference, progress=progress)
    rows = [r for r in products.products(db, kind="image", group_id=group) if r["subtype"] == "image"]
    start, end = (rows[0]["start_mjd"], rows[0]["end_mjd"]) if rows else (0.0, 0.0)
    # the candidates this image measured (from the tables, so a rerun after a kill redraws them too)
    measured = catalogue.tables(db).ForcedFlux & {"image_id": group}
    here = set(measured.to_arrays("source_id").tolist()) if measured else set()
    flagged = variability.flagged(db)
    to_plot = sorted((set(flagged["variable"]) | set(flagged["ese_candidate"])) & (here | set(report.promoted)))
    curves = []
    for source_id in to_plot:
        curve = photometry.light_curve(db, source_id)
        if not len(curve.mjd):
            continue
        assessment = variability.assess(curve.mjd, curve.flux_jy, curve.flux_err_jy, settings.science.variability)
        figure = photometry.light_curve_figure(curve, f"source {source_id}", assessment)
        path = lightcurve_path(radio_root, source_id)
        sweep_staging(path)
        with atomic_path(path) as tmp:
            figure.savefig(tmp, dpi=90)
        plt.close(figure)
        detail = {"source_id": source_id, "variable": source_id in flagged["variable"],
                  "ese_candidate": source_id in flagged["ese_candidate"], "n_epochs": len(curve.mjd)}  # fmt: skip
        products.record_product(db, "lightcurve", path, start_mjd=float(curve.mjd[0]), end_mjd=float(curve.mjd[-1]),
                                subtype="png", detail=detail)  # fmt: skip
        curves.append(str(path))
    # last: the record that says this image's science step is finished (science_pending)
    srl = Path(report.catalogue) if report.catalogue else Path(f"{prefix}.srl.fits")
    products.record_product(db, "catalogue", srl, start_mjd=start, end_mjd=end, group_id=group, subtype="srl",
                            detail={"n_detections": report.n_detections, "matched": report.matched,
                                    "promoted": report.promoted})  # fmt: skip
    return {
        "group": group,
        "catalogue": report.catalogue,
        "detections": report.n_detections,
        "matched": report.matched,
        "new_candidates": report.new_candidates,
        "promoted": report.promoted,
        "measured": report.measured,
        "variables": report.variables,
        "ese_candidates": report.ese_candidates,
        "lightcurves": curves,
        "already": report.already_done,
        "timings": report.timings,
    }


def _qa(layout, paths, radio_root, settings, result, report: GroupReport) -> dict:
    catalog = skymodel.read_catalog(catalog_path(radio_root, settings))
    sky = settings.calibration.sky.model_copy(update={"max_sources": 100000, "min_beam": 0.05, "min_apparent_jy": 0.0})
    expected = skymodel.select_sources(
        catalog, layout.ra0_deg, layout.dec0_deg, layout.times_mjd, layout.all_freqs, layout.location(), sky
    )
    extra = {
        "group": report.group,
        "ms": str(layout.path),
        "tables": report.tables,
        "npix": result.npix,
        "cell_arcsec": result.cell_deg * 3600,
        "clean_components": result.n_components,
        "major_cycles": result.n_major,
        "timings": {**result.timings, **report.timings},
    }
    metrics = qa.image_metrics(paths, expected, settings.qa, extra)
    figure = qa.qa_figure(paths, metrics, f"{report.group} (pbcor)")
    report.qa = {
        k: str(v) for k, v in qa.write_qa(metrics, figure, qa_dir(radio_root, report.group), report.group).items()
    }
    import matplotlib.pyplot as plt

    plt.close(figure)
    return metrics


def expected_gain_noise(layout: MsLayout, sefd_jy: float, model_flux_jy: float, n_samples: int) -> float:
    """Thermal error of one antenna gain: sigma_vis / (|M| sqrt(N_ant - 1) sqrt(samples per solution))."""
    sigma = sefd_jy / np.sqrt(2 * 244_140.625 * layout.integration_s)
    return float(sigma / (model_flux_jy * np.sqrt(max(layout.n_ant - 1, 1)) * np.sqrt(max(n_samples, 1))))


def night_mosaics(db: LabDatabase, radio_root: Path, day, settings=None) -> list:
    """One primary-beam-weighted mosaic per declination strip of the images observed on ``day`` (UTC date).

    The images are the catalogued ``image`` products of that night (one per group, its pointing declination
    from its ``image.pbcor`` record); each mosaic goes to ``images/mosaics/`` and is recorded as a ``mosaic``
    product. Returns ``mosaic.MosaicResult``s (empty when the night has no image).
    """
    from labpipe.radio import mosaic

    rows = products.products(db, date=day, kind="image")
    decs = {r["group_id"]: r["detail"]["dec_deg"] for r in rows if r["subtype"] == "image.pbcor" and r.get("detail")}
    images = {
        r["group_id"]: mosaic.MosaicInput(
            Path(r["path"]).with_suffix("").with_suffix(""), r["group_id"], r["start_mjd"], decs.get(r["group_id"], 0.0)
        )  # fmt: skip
        for r in rows
        if r["subtype"] == "image"
    }
    if not images:
        return []
    inputs = sorted(images.values(), key=lambda i: i.mjd)
    spans = {r["group_id"]: (r["start_mjd"], r["end_mjd"]) for r in rows if r["subtype"] == "image"}
    results = mosaic.strip_mosaics(inputs, inputs[0].mjd, inputs[-1].mjd, radio_root / "images" / "mosaics", settings)
    for result in results:
        start, end = min(spans[g][0] for g in result.groups), max(spans[g][1] for g in result.groups)
        products.record_product(db, "mosaic", result.path, start_mjd=start, end_mjd=end,
                                detail={"n_images": result.n_images, "dec_deg": result.dec_deg})  # fmt: skip
    return results
