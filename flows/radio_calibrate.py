"""Radio calibration and imaging flows (DSA-110): calibrate (24 h K+BP+G, 1 h G), apply + image, mosaic.

Deployments (deployments/prefect.yaml, cpu pool): ``radio-calibrate/daily`` (K+BP+G every 24 h),
``radio-calibrate/hourly`` (G every hour), ``radio-image/groups`` (every 10 min: apply and image every
converted group not imaged yet; a group with no valid calibration is held and raises the
``labpipe.radio.calibration.missing`` event), ``radio-mosaic/nightly``. A calibration run releases
the held groups its tables cover. Every MS is flagged for interference (AOFlagger) once, before its
first solve or image; every new image goes through the science steps (sources, master catalogue,
forced photometry, variability), each product recorded in the products catalogue.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

from labpipe.blocks import dask_settings, lab_database, layout
from labpipe.blocks.radio_calibrate import calibration_settings
from labpipe.errors import RunFailed
from labpipe.flows.common import Progress, logger, markdown_table, png_markdown, publish_markdown
from labpipe.radio import calregistry, calrun, lag, products
from labpipe.radio.calibrate import calibration_client
from prefect import flow, task
from prefect.events import emit_event


def converted_groups(radio_root: Path) -> list[Path]:
    """Every group MS in the radio tree (science and calibrators), oldest first."""
    found = [p for kind in ("calibrators", "science") for p in (radio_root / "ms" / kind).glob("*/*.ms")]
    return sorted(found, key=lambda p: calrun.group_of(p))


def _choose_group(radio_root: Path, cadence: str, db) -> Path | None:
    """The newest group not yet solved at this cadence (calibrator transits first for 24 h)."""
    solved = {
        r["table_name"].split("_")[0] for r in calregistry.tables(db).CalTable.to_dicts() if r["cadence"] == cadence
    }
    groups = [p for p in converted_groups(radio_root) if calrun.group_of(p) not in solved]
    if cadence == "24h":
        transits = [p for p in groups if p.parent.parent.name == "calibrators"]
        groups = transits or groups
    return groups[-1] if groups else None


@task(name="flag-rfi", task_run_name="flag-{ms.name}")
def flag_task(ms: Path, radio_root: Path, cal_block, db_block, layout_block) -> dict:
    """AOFlagger on one MS, once (a recorded MS is not flagged again)."""
    db = lab_database(db_block, layout_block)
    return calrun.flag_once(
        db, radio_root, ms, calibration_settings(cal_block), progress=Progress(f"flagging {ms.name}")
    )


@task(name="image-science", task_run_name="science-{group}")
def science_task(group: str, radio_root: Path, cal_block, db_block, layout_block) -> dict:
    """Sources, master catalogue, forced photometry and variability of one group's image."""
    db = lab_database(db_block, layout_block)
    return calrun.image_science(
        db, radio_root, group, calibration_settings(cal_block), progress=Progress(f"science steps {group}")
    )


@task(name="solve-group", task_run_name="solve-{cadence}-{ms.name}", retries=1, retry_delay_seconds=30)
def solve_group_task(ms: Path, cadence: str, radio_root: Path, cal_block, db_block, layout_block) -> dict:
    db = lab_database(db_block, layout_block)
    with calibration_client(dask_settings()) as client:
        report = calrun.solve_and_register(
            db,
            radio_root,
            ms,
            cadence,
            calibration_settings(cal_block),
            client=client,
            progress=Progress(f"{cadence} solve units"),
        )
    return {"group": report.group, "tables": report.tables, "timings": report.timings, "sources": report.n_sources}


@task(name="apply-image", task_run_name="apply-image-{ms.name}")
def apply_image_task(ms: Path, radio_root: Path, cal_block, db_block, layout_block) -> dict:
    db = lab_database(db_block, layout_block)
    report = calrun.apply_and_image(
        db, radio_root, ms, calibration_settings(cal_block), progress=Progress(f"CLEAN {ms.name}")
    )
    if report.held:
        logger().warning("group %s held: %s", report.group, report.reason)
        emit_event(
            event="labpipe.radio.calibration.missing",
            resource={"prefect.resource.id": f"labpipe.radio.group.{report.group}", "prefect.resource.name": "radio"},
            payload={"group": report.group, "ms": str(ms), "reason": report.reason},
        )
    return {"group": report.group, "held": report.held, "reason": report.reason, "images": report.images,
            "qa": report.qa, "metrics": {k: v for k, v in report.metrics.items() if k != "sources"},
            "timings": report.timings}  # fmt: skip


def _image_group(ms: Path, radio_root: Path, cal_block, db_block, layout_block) -> dict:
    """Flag (once), apply and image one group, then the science steps on its image."""
    flags = flag_task(ms, radio_root, cal_block, db_block, layout_block)
    result = apply_image_task(ms, radio_root, cal_block, db_block, layout_block)
    result["flags"] = flags
    if not result["held"]:
        result["science"] = science_task(result["group"], radio_root, cal_block, db_block, layout_block)
    return result


def _science_markdown(results: list[dict]) -> str:
    rows = [
        {"group": r["group"], "detections": s.get("detections"), "matched": s.get("matched"),
         "promoted": len(s.get("promoted") or []), "measured": s.get("measured"), "variables": s.get("variables"),
         "ESE candidates": s.get("ese_candidates"), "flagged after": f"{r['flags'].get('flagged_after', 0):.3f}"}
        for r in results if (s := r.get("science")) and "skipped" not in s
    ]  # fmt: skip
    return "## sources, photometry, variability\n\n" + markdown_table(rows) if rows else ""


def _qa_markdown(result: dict) -> str:
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    m = result["metrics"]
    lines = [
        f"## {result['group']}",
        f"rms {m['rms_jy'] * 1e3:.2f} mJy/beam, dynamic range {m['dynamic_range']:.0f}, "
        f'beam {m["beam_arcsec"]["bmaj"]:.0f}" x {m["beam_arcsec"]["bmin"]:.0f}", {m["n_sources"]} catalog sources: '
        f'median flux ratio {m["flux_ratio_median"]:.3f}, median offset {m["offset_arcsec_median"]:.1f}" '
        f"({'passed' if m['passed'] else 'FAILED'})",
    ]
    png = result["qa"].get("png")
    if png:
        fig = plt.figure(figsize=(12, 5.5))
        fig.figimage(mpimg.imread(png), resize=True)
        lines.append(png_markdown(fig, f"QA {result['group']}"))
        plt.close(fig)
    return "\n\n".join(lines)


def _release_held(radio_root: Path, cal_block, db_block, layout_block) -> list[dict]:
    db = lab_database(db_block, layout_block)
    released = []
    for group in calregistry.releasable(db):
        try:
            result = _image_group(Path(group["ms_path"]), radio_root, cal_block, db_block, layout_block)
        except Exception as exc:  # one bad group must not stop the others; radio-image retries it
            logger().error("released group %s failed: %s", group["group_id"], exc)
            continue
        released.append(result)
    return released


@flow(name="radio-calibrate", flow_run_name="radio-calibrate-{cadence}", log_prints=True)
def radio_calibrate(
    cadence: Literal["24h", "1h"] = "24h",
    ms: str | None = None,
    cal_block: str | None = "default",
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """Flag a group (once), solve it at this cadence, register its tables if they pass QA, release held groups.

    Args:
        cadence: 24h (delay, bandpass and gains) or 1h (gains only).
        ms: The group's Measurement Set; empty: the newest converted group.
        cal_block: Name of the labpipe radio calibration block (sky model, solver, QA gate, imaging).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    radio_root = layout(layout_block).radio
    db = lab_database(db_block, layout_block)
    target = radio_root / ms if ms else _choose_group(radio_root, cadence, db)  # relative: under the radio root
    if target is None:
        publish_markdown("No converted group to calibrate.", key=f"radio-calibrate-{cadence}", description="nothing")
        return {"group": None}
    flag_task(target, radio_root, cal_block, db_block, layout_block)
    solved = solve_group_task(target, cadence, radio_root, cal_block, db_block, layout_block)
    released = _release_held(radio_root, cal_block, db_block, layout_block)
    rows = [{"table": Path(t["path"]).name, "status": t["status"], **t["qa"], "reason": t["reason"]}
            for t in solved["tables"].values()]  # fmt: skip
    timings = ", ".join(f"{k} {v:.1f}" for k, v in solved["timings"].items())
    publish_markdown(
        f"# {cadence} calibration of `{solved['group']}`\n{solved['sources']} catalog sources in the model; "
        f"seconds: {timings}\n\n" + markdown_table(rows) + f"\nReleased held groups: {[r['group'] for r in released]}",
        key=f"radio-calibrate-{cadence}",
        description=f"{cadence} calibration summary",
    )
    if not all(t["status"] == "active" for t in solved["tables"].values()):
        reasons = [t["reason"] for t in solved["tables"].values()]
        raise RunFailed(f"calibration of {solved['group']}", f"failed QA: {reasons}",
                        "the tables were not registered; groups stay held until a table passes")  # fmt: skip
    return {**solved, "released": [r["group"] for r in released]}


@flow(name="radio-image", flow_run_name="radio-image", log_prints=True)
def radio_image(
    ms: list[str] | None = None,
    cal_block: str | None = "default",
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """Flag (once), calibrate, image and QA every converted group not imaged yet; sources and photometry of each image.

    Args:
        ms: Only these Measurement Sets; empty: every converted group not imaged yet.
        cal_block: Name of the labpipe radio calibration block (sky model, solver, QA gate, imaging).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    radio_root = layout(layout_block).radio
    db = lab_database(db_block, layout_block)
    if ms:
        todo = [radio_root / p for p in ms]  # a converted event's ms_path is relative to the radio root
    else:
        imaged = {p["group_id"] for p in products.products(db, kind="image")}
        held = {g["group_id"] for g in calregistry.held_groups(db)}
        todo = [p for p in converted_groups(radio_root) if calrun.group_of(p) not in imaged | held]
    progress = Progress("groups applied and imaged")
    results, failures = [], []
    for i, path in enumerate(todo):
        try:
            results.append(_image_group(path, radio_root, cal_block, db_block, layout_block))
        except Exception as exc:  # one bad group must not stop the others
            logger().error("group %s failed: %s", path, exc)
            failures.append({"ms": str(path), "error": str(exc)[:500]})
        progress(i + 1, len(todo))
    if calibration_settings(cal_block).run_science:  # images whose science step failed or was killed: resume
        done = {r["group"] for r in results}
        for group in [g for g in calrun.science_pending(db) if g not in done]:
            try:
                science = science_task(group, radio_root, cal_block, db_block, layout_block)
                results.append({"group": group, "held": False, "resumed": True, "science": science, "flags": {}})
            except Exception as exc:
                logger().error("science of %s failed: %s", group, exc)
                failures.append({"ms": group, "error": str(exc)[:500]})
    imaged_ok = [r for r in results if not r["held"]]
    held_now = [{"group": r["group"], "reason": r["reason"]} for r in results if r["held"]]
    parts = ["# radio-image", f"{len(imaged_ok)} imaged, {len(held_now)} held, {len(failures)} failed"]
    parts += [_qa_markdown(r) for r in imaged_ok[-3:] if "metrics" in r]
    parts += [_science_markdown(imaged_ok)]
    parts += ["## held", markdown_table(held_now), "## failed", markdown_table(failures)]
    publish_markdown("\n\n".join(parts), key="radio-image", description="calibrated images and their QA")
    try:  # the stage lag for node_exporter's textfile collector; a metric must never fail the run
        lag.write_textfile(lag.LagCollector(db), radio_root / "metrics" / "labpipe_radio_lag.prom")
    except Exception as exc:
        logger().warning("stage lag metrics not written: %s", exc)
    if failures:
        raise RunFailed("radio-image", f"{len(failures)} groups failed: {failures[:3]}",
                        "the other groups were imaged; see the run's summary")  # fmt: skip
    science = {r["group"]: r["science"] for r in imaged_ok if "science" in r}
    imaged = [r["group"] for r in imaged_ok if not r.get("resumed")]
    return {"imaged": imaged, "held": [h["group"] for h in held_now], "science": science}


@flow(name="radio-mosaic", flow_run_name="radio-mosaic-{date}", log_prints=True)
def radio_mosaic(
    date: dt.date | None = None, layout_block: str | None = "default", db_block: str | None = "default"
) -> dict:
    """Primary-beam-weighted mosaics of one night's images, one per declination strip.

    Args:
        date: The night (UTC date); empty: yesterday.
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    day = date or dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    results = calrun.night_mosaics(lab_database(db_block, layout_block), layout(layout_block).radio, day)
    if not results:
        publish_markdown(f"No images on {day}.", key="radio-mosaic", description="nothing to mosaic")
        return {"mosaic": None, "mosaics": []}
    rows = [
        {
            "mosaic": r.path.name,
            "images": r.n_images,
            "dec (deg)": f"{r.dec_deg:.2f}",
            "pixels": f"{r.npix[1]} x {r.npix[0]}",
            "best noise (mJy/beam)": f"{r.rms_jy * 1e3:.2f}",
        }
        for r in results
    ]
    publish_markdown(f"# mosaics of {day}\n" + markdown_table(rows), key="radio-mosaic", description="nightly mosaics")
    return {"mosaic": str(results[0].path), "mosaics": [str(r.path) for r in results],
            "n_images": sum(r.n_images for r in results)}  # fmt: skip
