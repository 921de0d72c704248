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
from labpipe.radio import calregistry, imaging, products

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
    assert first == {"imaged": [], "held": [GROUP]}
    prom = (roots.radio / "metrics" / "labpipe_radio_lag.prom").read_text()
    assert "labpipe_radio_group_budget_seconds 309.0" in prom  # stage lag gauges for Prometheus
    events = _events("labpipe.radio.calibration.missing", f"labpipe.radio.group.{GROUP}")
    assert events and events[0].payload["group"] == GROUP
    assert radio_image(**kw) == {"imaged": [], "held": []}  # already held: not retried, no second alert

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
    assert kinds == {"ms", "caltable", "image", "qa", "mosaic"}
