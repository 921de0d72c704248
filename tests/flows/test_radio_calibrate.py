"""The radio calibration flows as Prefect runs: held group + alert, 24 h and 1 h solves, release, mosaic."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import time
import uuid
from pathlib import Path

import pytest
from labpipe.blocks import LabDatabase, StorageLayout
from labpipe.blocks.radio_calibrate import RadioCalibration
from labpipe.flows.radio_calibrate import radio_calibrate, radio_image, radio_mosaic
from labpipe.layout import Layout
from labpipe.radio import calregistry, catalogue, imaging, products

GROUP = "2025-10-13T13:28:03"


def _calgroup():
    path = Path(__file__).parents[1] / "lib" / "radio" / "calgroup.py"
    spec = importlib.util.spec_from_file_location("calgroup", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["calgroup"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def blocks(lab_db, tmp_path):
    name = f"t-{uuid.uuid4().hex[:8]}"
    roots = Layout.default(tmp_path).model_dump()
    roots["blobs"] = lab_db.blobs
    StorageLayout(**roots).save(name)
    LabDatabase(url=lab_db.target.url, schema_prefix=lab_db.prefix).save(name)
    roots = Layout(**roots).ensure()
    sim = _calgroup().simulate_group(tmp_path / "sim", n_ant=24, n_chan=16, n_time=6, seed=11)
    cal = RadioCalibration()
    cal.calibration.sky.catalog = sim.catalog
    cal.calibration.channels_per_unit = 8
    cal.imaging = imaging.ImagingSettings(npix=512, cell_arcsec=45)
    cal.registration_wait_s = 5
    cal.science.catalogue.promote_after = 1  # one image: its sources join the master list and are measured
    cal.save(name)
    ms = roots.radio / "ms" / "science" / GROUP[:10] / f"{GROUP}.ms"
    ms.parent.mkdir(parents=True)
    shutil.copytree(sim.ms, ms)
    return name, roots, ms


def _events(prefix: str, resource: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    wanted = EventFilter(event=EventNameFilter(prefix=[prefix]), resource=EventResourceFilter(id=[resource]))
    deadline, events = time.monotonic() + 20, []
    while not events and time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=wanted, limit=10).events
        time.sleep(0.5)
    return events


@pytest.mark.slow
def test_held_group_alerts_then_calibration_releases_it(blocks, lab_db):
    name, roots, ms = blocks
    kw = dict(cal_block=name, layout_block=name, db_block=name)

    first = radio_image(**kw)
    assert first == {"imaged": [], "held": [GROUP], "science": {}}
    prom = (roots.radio / "metrics" / "labpipe_radio_lag.prom").read_text()
    assert "labpipe_radio_group_budget_seconds 309.0" in prom  # stage lag gauges for Prometheus
    events = _events("labpipe.radio.calibration.missing", f"labpipe.radio.group.{GROUP}")
    assert events and events[0].payload["group"] == GROUP
    assert radio_image(**kw) == {"imaged": [], "held": [], "science": {}}  # held: not retried, no second alert
    flags = [p for p in products.products(lab_db, kind="qa") if p["subtype"] == "flags"]
    assert len(flags) == 1 and flags[0]["detail"]["ms"] == str(ms)  # flagged once, before the hold

    solved = radio_calibrate(cadence="24h", **kw)
    assert solved["group"] == GROUP and solved["released"] == [GROUP]
    assert {k: t["status"] for k, t in solved["tables"].items()} == {"K": "active", "BP": "active", "G": "active"}
    assert not calregistry.held_groups(lab_db)
    pbcor = [p for p in products.products(lab_db, kind="image") if p["subtype"] == "image.pbcor"]
    assert len(pbcor) == 1 and Path(pbcor[0]["path"]).exists()

    hourly = radio_calibrate(cadence="1h", ms=str(ms.relative_to(roots.radio)), **kw)  # as the trigger passes it
    assert list(hourly["tables"]) == ["G"] and hourly["tables"]["G"]["status"] == "active"
    assert Path(hourly["tables"]["G"]["path"]).name == f"{GROUP}_1h.gpcal"
    found = calregistry.lookup(lab_db, pbcor[0]["start_mjd"])
    assert found.bp["cadence"] == "24h" and {g["cadence"] for g in found.g} <= {"24h", "1h"}

    mosaic = radio_mosaic(date=GROUP[:10], layout_block=name, db_block=name)
    assert mosaic["n_images"] == 1 and Path(mosaic["mosaic"]).exists()
    kinds = {p["kind"] for p in products.products(lab_db)}
    assert kinds == {"ms", "caltable", "image", "qa", "mosaic", "catalogue"}
    # flagged once for all the runs above (hold, 24 h solve, release and image, 1 h solve)
    assert len([p for p in products.products(lab_db, kind="qa") if p["subtype"] == "flags"]) == 1
    sources = catalogue.tables(lab_db)
    assert (sources.Image & {"image_id": GROUP}).fetch1("status") == "measured"
    masters = catalogue.master_sources(lab_db)
    assert masters and any(m["ref_name"] for m in masters)  # identified in the reference (sky model) catalog
    assert len(sources.ForcedFlux & {"image_id": GROUP}) == len(masters)  # every master source measured


@pytest.mark.slow
def test_radio_image_runs_the_science_of_a_month_and_finds_the_variable_and_the_ese(lab_db, tmp_path):
    """Thirty imaged epochs whose science step has not run (as after a crash, or with science switched on later):
    radio-image measures them all, flags exactly the variable and the ESE-like dip, and plots their light curves."""
    import math

    import numpy as np
    from labpipe.radio import catalogue, simulate, variability

    name = f"t-{uuid.uuid4().hex[:8]}"
    roots = Layout.default(tmp_path).model_dump()
    roots["blobs"] = lab_db.blobs
    StorageLayout(**roots).save(name)
    LabDatabase(url=lab_db.target.url, schema_prefix=lab_db.prefix).save(name)
    roots = Layout(**roots).ensure()
    RadioCalibration().save(name)
    epochs, sky = simulate.science_epochs(roots.radio, 30)
    for group, image in epochs:  # what the imaging step records
        for kind, path in image.paths.items():
            products.record_product(lab_db, "image", path, start_mjd=image.mjd, end_mjd=image.mjd + 0.0035,
                                    group_id=group, subtype=kind)  # fmt: skip
    kw = dict(cal_block=name, layout_block=name, db_block=name)

    result = radio_image(**kw)
    assert result["imaged"] == [] and sorted(result["science"]) == [g for g, _ in epochs]

    masters = catalogue.master_sources(lab_db)
    assert len(masters) == len(sky)
    pos = np.array([(m["ra_deg"], m["dec_deg"]) for m in masters])

    def identity(source) -> int:
        sep = np.hypot((pos[:, 0] - source.ra_deg) * math.cos(math.radians(source.dec_deg)), pos[:, 1] - source.dec_deg)
        return int(masters[int(np.argmin(sep))]["source_id"])

    variable, ese = identity(sky[-2]), identity(sky[-1])
    flagged = variability.flagged(lab_db)
    assert flagged["ese_candidate"] == [ese]
    assert variable in flagged["variable"] and set(flagged["variable"]) <= {variable, ese}
    plotted = {p["detail"]["source_id"]: Path(p["path"]) for p in products.products(lab_db, kind="lightcurve")}
    assert {variable, ese} <= set(plotted) and all(p.stat().st_size > 0 for p in plotted.values())
    assert len(products.products(lab_db, kind="catalogue")) == len(epochs)
    assert radio_image(**kw) == {"imaged": [], "held": [], "science": {}}  # nothing pending: nothing redone
