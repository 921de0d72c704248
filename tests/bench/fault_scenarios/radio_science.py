"""Radio science: the science step (sources, master catalogue, photometry, variability) of eight imaged epochs,
killed anywhere; the rerun (what every radio-image run does: ``calrun.science_pending``) must finish it."""

from __future__ import annotations

from pathlib import Path

from fault_scenarios import (
    Context,
    Outcome,
    Scenario,
    compare_tree,
    load_checksums,
    partial_names,
    save_checksums,
    schema_prefix,
    tree_checksums,
)

EPOCHS = 8


def _db(ctx: Context, root: Path):
    from labpipe.db.connect import open_lab_database
    from labpipe.db.settings import DatabaseSettings

    config = DatabaseSettings(url=ctx.database_url, schema_prefix=schema_prefix(root))
    return open_lab_database(config, blobs=root / "blobs")


def _settings():
    from labpipe.radio.calrun import RadioCalSettings

    settings = RadioCalSettings()
    settings.science.catalogue.promote_after = 2  # promotions (and back-fills) happen inside the window
    return settings


class RadioScience(Scenario):
    name = "radio-science"
    description = f"science step of {EPOCHS} imaged epochs (PyBDSF, cross-match, forced photometry, variability)"

    def prepare(self, ctx: Context, root: Path) -> None:
        from labpipe.radio import products, simulate

        radio = root / "radio"
        epochs, _ = simulate.science_epochs(radio, EPOCHS)
        db = _db(ctx, root)
        for group, image in epochs:
            for kind, path in image.paths.items():
                products.record_product(db, "image", path, start_mjd=image.mjd, end_mjd=image.mjd + 0.0035,
                                        group_id=group, subtype=kind)  # fmt: skip
        save_checksums(root, "images", tree_checksums(radio / "images" / "single"))

    def run(self, ctx: Context, root: Path) -> None:
        from labpipe.radio import calrun

        db, settings = _db(ctx, root), _settings()
        for group in calrun.science_pending(db):  # as radio-image resumes them
            calrun.image_science(db, root / "radio", group, settings)

    def check(self, ctx: Context, root: Path, finished: bool = True) -> Outcome:
        radio = root / "radio"
        lost = compare_tree(load_checksums(root, "images"), tree_checksums(radio / "images" / "single"))
        half = partial_names(radio / "images")
        if not finished:
            return Outcome(complete=True, lost_files=lost, half_written=half)
        from labpipe.radio import calrun, catalogue, photometry, products

        db = _db(ctx, root)
        problems = []
        if calrun.science_pending(db):
            problems.append(f"pending {calrun.science_pending(db)}")
        masters = catalogue.master_sources(db)
        if not masters:
            problems.append("no master source")
        short = [m["source_id"] for m in masters if len(photometry.light_curve(db, m["source_id"]).mjd) != EPOCHS]
        if short:
            problems.append(f"light curves without every epoch: {short}")
        from labpipe.radio import variability

        plotted = {p["detail"]["source_id"]: p["detail"]["n_epochs"] for p in products.products(db, kind="lightcurve")}
        flagged = set(sum(variability.flagged(db).values(), []))
        stale = sorted(s for s in flagged if plotted.get(s) != EPOCHS)
        if stale:
            problems.append(f"candidates without an up-to-date light-curve plot: {stale}")
        for p in products.products(db, kind="lightcurve"):
            data = Path(p["path"]).read_bytes() if Path(p["path"]).is_file() else b""
            if not data.startswith(b"\x89PNG") or not data.rstrip().endswith(b"IEND\xaeB`\x82"):
                half.append(Path(p["path"]).name)
        for p in products.products(db, kind="catalogue"):
            if not Path(p["path"]).is_file():
                problems.append(f"missing {p['path']}")
        return Outcome(complete=not problems, lost_files=lost, half_written=half, detail="; ".join(problems))


SCENARIO = RadioScience()
