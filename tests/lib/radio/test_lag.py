"""Stage lag (arrival -> MS -> image) from the lab database, exported as Prometheus gauges against the budget."""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest
from labpipe.radio import lag, products
from labpipe.radio.schema import tables
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture
def local_zone():
    """A local time zone 7 h from UTC: the products catalogue stores local times, the stream UTC."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/Phoenix"  # UTC-7, no daylight saving
    time.tzset()
    yield
    if before is None:
        os.environ.pop("TZ")
    else:
        os.environ["TZ"] = before
    time.tzset()


def _group(db, group_id: str, last_seen: dt.datetime, finished: dt.datetime | None, state="completed"):
    tables(db).SubbandGroup.insert1(
        dict(group_id=group_id, state=state, n_files=16, first_seen=last_seen - dt.timedelta(seconds=20),
             last_seen=last_seen, finished=finished, kind="science", ms_path=f"ms/science/{group_id}.ms")
    )  # fmt: skip


def _image(db, group_id: str, created_utc: dt.datetime, tmp_path):
    path = tmp_path / f"{group_id}.image.fits"
    path.write_bytes(b"x")
    products.record_product(db, "image", path, start_mjd=61000.0, end_mjd=61000.003, group_id=group_id)
    local = created_utc.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)  # as calregistry.now() stores it
    table = products.tables(db).Product
    table.update1({**(table & {"product_id": products.product_id(path)}).to_dicts()[0], "created": local})


def _metrics(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_stage_lags_and_gauges_against_the_budget(lab_db, tmp_path, local_zone):
    t0 = dt.datetime(2026, 12, 6, 6, 0, 0)
    _group(lab_db, "2026-12-06T06:00:00", t0, t0 + dt.timedelta(seconds=100))  # 100 s to MS
    _image(lab_db, "2026-12-06T06:00:00", t0 + dt.timedelta(seconds=250), tmp_path)  # 150 s to image
    t1 = t0 + dt.timedelta(seconds=309)
    _group(lab_db, "2026-12-06T06:05:09", t1, t1 + dt.timedelta(seconds=200))
    _image(lab_db, "2026-12-06T06:05:09", t1 + dt.timedelta(seconds=400), tmp_path)  # over budget: 400 s
    t2 = t1 + dt.timedelta(seconds=309)
    _group(lab_db, "2026-12-06T06:10:18", t2, t2 + dt.timedelta(seconds=90))  # converted, not imaged yet
    _group(lab_db, "2026-12-06T06:15:27", t2 + dt.timedelta(seconds=309), None, state="pending")

    lags = lag.stage_lags(lab_db)
    assert [(x.group_id, x.arrival_to_ms, x.ms_to_image, x.arrival_to_image) for x in lags] == [
        ("2026-12-06T06:00:00", 100.0, 150.0, 250.0),
        ("2026-12-06T06:05:09", 200.0, 200.0, 400.0),
        ("2026-12-06T06:10:18", 90.0, None, None),
    ]

    path = tmp_path / "metrics" / "labpipe_radio_lag.prom"
    lag.write_textfile(lag.LagCollector(lab_db), path)
    m = _metrics(path.read_text())
    assert m[("labpipe_radio_stage_lag_seconds", (("stage", "arrival_to_image"),))] == 400.0  # newest imaged
    assert m[("labpipe_radio_stage_lag_seconds", (("stage", "arrival_to_ms"),))] == 200.0
    assert m[("labpipe_radio_stage_lag_max_seconds", (("stage", "ms_to_image"),))] == 200.0
    assert m[("labpipe_radio_group_budget_seconds", ())] == 309.0
    assert m[("labpipe_radio_groups_over_budget", ())] == 1.0
