"""Radio calibration demo: calibrate, apply, image and QA the groups the radio demo converted.

The catalog the simulator drew its sky from is the calibration sky model (an NVSS extract on a
real system); the 24 h K+BP+G solve runs on the calibrator transit, a 1 h G solve on the newest
group, then ``radio-image/groups`` applies and images every group and the QA picture is shown.
"""

from __future__ import annotations

from pathlib import Path

from labpipe.deployments.demo import DemoContext, DemoResult

ORDER = 25


def _catalog(radio_root: Path) -> Path | None:
    found = sorted((radio_root / "static" / "simulation").glob("*catalog*.csv"))
    return found[0] if found else None


def _num(value, scale: float, spec: str) -> str:
    """A QA figure for the summary; null (no measurable source) prints as n/a."""
    return "n/a" if value is None else format(value * scale, spec)


def run(ctx: DemoContext) -> DemoResult:
    import shutil

    from labpipe.blocks import lab_database
    from labpipe.blocks.radio_calibrate import RadioCalibration
    from labpipe.radio import calregistry, products

    radio_root = ctx.layout.radio
    catalog = _catalog(radio_root)
    if catalog is None:
        return DemoResult("radio_calibrate", False, ["no simulated catalog: run the radio demo first"])
    nvss = radio_root / "static" / "catalogs" / "nvss.csv"
    nvss.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(catalog, nvss)
    RadioCalibration().save("default", overwrite=True)  # defaults: the catalog is static/catalogs/nvss.csv
    ctx.say(f"sky model catalog: {nvss}")
    runs = [ctx.run("radio-calibrate/daily", timeout=900), ctx.run("radio-calibrate/hourly", timeout=600)]
    runs.append(ctx.run("radio-image/groups", timeout=1500))
    db = lab_database()
    tables = calregistry.tables(db).CalTable.to_dicts(order_by="solve_mjd")
    images = [p for p in products.products(db, kind="image") if p["subtype"] == "image.pbcor"]
    pngs = [p["path"] for p in products.products(db, kind="qa") if p["subtype"] == "png"]
    names = ", ".join(f"{t['table_name']} ({t['status']})" for t in tables)
    lines = [f"calibration tables: {names}"]
    lines += [f"image: {p['path']}" for p in images]
    for p in products.products(db, kind="qa"):
        if p["subtype"] == "metrics" and p.get("detail"):
            d = p["detail"]
            lines.append(f"QA {p['group_id']}: rms {_num(d['rms_jy'], 1e3, '.1f')} mJy, "
                         f"DR {_num(d['dynamic_range'], 1, '.0f')}, {d['n_sources']} sources, "
                         f"median flux error {_num(d['flux_error_median'], 1, '.3f')}, "
                         f"QA {'passed' if d.get('passed') else 'NOT passed'}")  # fmt: skip
    lines += [f"QA picture: {p}" for p in pngs]
    lines.append("held groups: " + (", ".join(g["group_id"] for g in calregistry.held_groups(db)) or "none"))
    ok = all(r.state and r.state.is_completed() for r in runs) and bool(images) and bool(pngs)
    return DemoResult("radio_calibrate", ok, lines)
