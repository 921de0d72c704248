"""Radio calibration + imaging: solve K+BP+G on a converted group, apply, image, QA; killed anywhere in it.

The step is what the ``radio-calibrate/daily`` and ``radio-image/groups`` flows do for one group: solve and
register the 24 h tables unless they are decided already, then apply them into CORRECTED_DATA, image, write
the FITS files and QA. Each product must be complete or absent, and the raw visibilities (DATA, FLAG, UVW)
must come through untouched.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path

from fault_scenarios import Context, Outcome, Scenario, partial_names, schema_prefix, sha256

GROUP = "2025-10-13T13:28:03"
KINDS = ("K", "BP", "G")
TABLES = tuple(f"{GROUP}_24h.{suffix}" for suffix in ("kcal", "bpcal", "gpcal"))
IMAGES = ("dirty", "image", "image.pbcor", "model", "pb", "psf", "residual")


def _calgroup():
    path = Path(__file__).resolve().parents[2] / "lib" / "radio" / "calgroup.py"
    spec = importlib.util.spec_from_file_location("calgroup", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["calgroup"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _simulated(ctx: Context) -> Path:
    folder = ctx.cache / "calgroup"
    with open(ctx.cache / "calgroup.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            _calgroup().simulate_group(folder, n_ant=16, n_chan=32, n_time=6)
            (folder / "done").write_text("")
    return folder


def _ms(root: Path) -> Path:
    return root / "radio" / "ms" / "science" / GROUP[:10] / f"{GROUP}.ms"


def _settings(root: Path):
    from labpipe.radio import calrun, imaging

    settings = calrun.RadioCalSettings()
    settings.calibration.sky.catalog = root / "catalog.csv"
    settings.calibration.channels_per_unit = 16
    settings.imaging = imaging.ImagingSettings(npix=256, cell_arcsec=60)
    settings.registration_wait_s = 5
    return settings


def _db(ctx: Context, root: Path):
    from labpipe.db.connect import LabDatabase
    from labpipe.db.target import DatabaseTarget

    return LabDatabase(DatabaseTarget.from_url(ctx.database_url), root / "blobs", schema_prefix(root))


def _raw_digest(ms: Path) -> str | None:
    """SHA-256 of the raw visibilities, flags and UVWs (what calibration must never change)."""
    from casacore.tables import table

    digest = hashlib.sha256()
    try:
        with table(str(ms), ack=False) as t:
            for column in ("DATA", "FLAG", "UVW"):
                digest.update(t.getcol(column).tobytes())
    except RuntimeError:
        return None
    return digest.hexdigest()


def _table_ok(path: Path) -> bool:
    from casacore.tables import table

    try:
        with table(str(path), ack=False) as t:
            return t.nrows() > 0
    except RuntimeError:
        return False


def _fits_ok(path: Path, npix: int) -> bool:
    from astropy.io import fits

    try:
        with fits.open(path, memmap=False) as hdus:
            return hdus[0].data is not None and hdus[0].data.shape[-2:] == (npix, npix)
    except (OSError, ValueError):
        return False


class RadioCalibrateImage(Scenario):
    name = "radio-calibrate-image"
    description = "solve K+BP+G, apply and image a converted group (16 antennas, 32 channels, 6 integrations)"
    timeout = 300.0

    def prepare(self, ctx: Context, root: Path) -> None:
        source = _simulated(ctx)
        shutil.copytree(source / "group.ms", _ms(root))
        shutil.copy2(source / "catalog.csv", root / "catalog.csv")
        inputs = {"raw": _raw_digest(_ms(root)), "catalog.csv": sha256(root / "catalog.csv")}
        (root / "inputs.json").write_text(json.dumps(inputs))

    def run(self, ctx: Context, root: Path) -> None:
        from labpipe.radio import calregistry, calrun

        db, settings, ms = _db(ctx, root), _settings(root), _ms(root)
        decided = {
            r["table_name"] for r in calregistry.tables(db).CalTable.to_dicts() if r["status"] in ("active", "rejected")
        }
        if decided != set(TABLES):  # what the daily flow's choice of group amounts to
            calrun.solve_and_register(db, root / "radio", ms, "24h", settings)
        report = calrun.apply_and_image(db, root / "radio", ms, settings)
        if report.held:
            raise SystemExit(f"held: {report.reason}")

    def check(self, ctx: Context, root: Path, finished: bool = True) -> Outcome:
        from labpipe.radio import calrun

        radio, settings = root / "radio", _settings(root)
        inputs = json.loads((root / "inputs.json").read_text())
        lost = [] if _raw_digest(_ms(root)) == inputs["raw"] else [f"{_ms(root).name} DATA/FLAG/UVW"]
        lost += [] if sha256(root / "catalog.csv") == inputs["catalog.csv"] else ["catalog.csv"]
        tables = {k: calrun.table_path(radio, GROUP, "24h", k) for k in KINDS}
        prefix = calrun.image_prefix(radio, GROUP)
        images = {k: prefix.parent / f"{prefix.name}.{k}.fits" for k in IMAGES}
        qa = list(calrun.qa_dir(radio, GROUP).glob("*.metrics.json"))
        half = [f"{p.name}" for p in tables.values() if p.exists() and not _table_ok(p)]
        half += [f"{p.name}" for p in images.values() if p.exists() and not _fits_ok(p, settings.imaging.npix)]
        for path in qa:
            try:
                json.loads(path.read_text())
            except ValueError:
                half.append(path.name)
        complete, detail = True, ""
        if finished:
            half += partial_names(radio / "ms") + partial_names(radio / "images")
            from labpipe.radio import calregistry

            db = _db(ctx, root)
            try:
                status = {r["table_name"]: r["status"] for r in calregistry.tables(db).CalTable.to_dicts()}
            finally:
                db.connection.close()
            active = all(status.get(name) == "active" for name in TABLES)
            complete = active and all(p.exists() for p in [*tables.values(), *images.values()]) and bool(qa)
            detail = f"tables {status}; images {[k for k, p in images.items() if p.exists()]}; qa {len(qa)}"
        return Outcome(complete=complete, lost_files=lost, half_written=half, detail=detail)


SCENARIO = RadioCalibrateImage()
