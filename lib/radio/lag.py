"""Stage lag of the radio stream: subband arrival -> Measurement Set -> image, against the real-time budget.

DSA-110 writes one group of subbands every ~309 s (one 5-minute drift scan); a pipeline that keeps up turns
each group into an image in less than that, or the backlog grows. For each group this module reads, from the
lab database, when its last subband was recorded in incoming/ (``SubbandGroup.last_seen``: the group was
complete), when its MS was published (``finished``) and when its image was catalogued (``Product.created`` of
kind ``image``), and exports the lags as Prometheus gauges:

- ``labpipe_radio_stage_lag_seconds{stage}`` for the newest imaged group, stages ``arrival_to_ms``,
  ``ms_to_image`` and ``arrival_to_image``;
- ``labpipe_radio_stage_lag_max_seconds{stage}`` over the groups looked at (the window);
- ``labpipe_radio_group_budget_seconds`` (309 by default) and ``labpipe_radio_groups_over_budget`` (groups of
  the window whose arrival-to-image lag exceeded it).

The stream stores UTC times; the products catalogue stores local times (calregistry.now): both are compared in
UTC here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path

from labpipe.db.connect import LabDatabase

DSA110_GROUP_BUDGET_S = 309.0  # one group per ~309 s (DSA-110's cadence)
STAGES = ("arrival_to_ms", "ms_to_image", "arrival_to_image")


@dataclass
class StageLag:
    group_id: str
    arrived: str  # UTC, ISO: the group's last subband recorded
    converted: str | None  # UTC: the MS published
    imaged: str | None  # UTC: the image catalogued
    arrival_to_ms: float | None
    ms_to_image: float | None
    arrival_to_image: float | None

    def as_json(self) -> dict:
        return asdict(self)


def _local_to_utc(value: dt.datetime) -> dt.datetime:
    """A naive local time (the products catalogue's) as a naive UTC time (the stream's)."""
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def _seconds(later: dt.datetime | None, earlier: dt.datetime | None) -> float | None:
    return None if later is None or earlier is None else round((later - earlier).total_seconds(), 3)


def stage_lags(db: LabDatabase, *, window: int = 50) -> list[StageLag]:
    """Lags of the newest ``window`` converted groups, oldest first (a group not imaged yet has no image lag)."""
    from labpipe.radio import products
    from labpipe.radio.schema import tables

    groups = (tables(db).SubbandGroup & "state = 'completed'").to_dicts(order_by="group_id DESC", limit=window)
    imaged: dict[str, dt.datetime] = {}
    for row in products.products(db, kind="image"):
        created = _local_to_utc(row["created"])
        if row["group_id"] and (row["group_id"] not in imaged or created < imaged[row["group_id"]]):
            imaged[row["group_id"]] = created  # the first image product of the group
    lags = []
    for g in reversed(groups):
        arrived, converted, image = g["last_seen"], g["finished"], imaged.get(g["group_id"])
        lags.append(
            StageLag(
                group_id=g["group_id"],
                arrived=arrived.isoformat(),
                converted=converted.isoformat() if converted else None,
                imaged=image.isoformat() if image else None,
                arrival_to_ms=_seconds(converted, arrived),
                ms_to_image=_seconds(image, converted),
                arrival_to_image=_seconds(image, arrived),
            )
        )
    return lags


def lag_metrics(lags: list[StageLag], family, budget_s: float = DSA110_GROUP_BUDGET_S) -> list:
    """Gauge families for these lags (``family`` is prometheus_client's GaugeMetricFamily)."""
    latest = family("labpipe_radio_stage_lag_seconds", "Stage lag of the newest imaged radio group", labels=["stage"])
    worst = family("labpipe_radio_stage_lag_max_seconds", "Largest stage lag of the recent groups", labels=["stage"])
    budget = family("labpipe_radio_group_budget_seconds", "Real-time budget per group (DSA-110: one group per ~309 s)")
    over = family("labpipe_radio_groups_over_budget", "Recent groups whose arrival-to-image lag exceeded the budget")
    done = [lag for lag in lags if lag.arrival_to_image is not None]
    if done:
        for stage in STAGES:
            latest.add_metric([stage], getattr(done[-1], stage))
    for stage in STAGES:
        values = [getattr(lag, stage) for lag in lags if getattr(lag, stage) is not None]
        if values:
            worst.add_metric([stage], max(values))
    budget.add_metric([], budget_s)
    over.add_metric([], sum(lag.arrival_to_image > budget_s for lag in done))
    return [latest, worst, budget, over]


class LagCollector:
    """Prometheus collector reading the lags from the lab database at every scrape."""

    def __init__(self, db: LabDatabase, *, window: int = 50, budget_s: float = DSA110_GROUP_BUDGET_S) -> None:
        self.db, self.window, self.budget_s = db, window, budget_s

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        yield from lag_metrics(stage_lags(self.db, window=self.window), GaugeMetricFamily, self.budget_s)


def write_textfile(collector: LagCollector, path: Path) -> None:
    """The gauges in node_exporter's textfile-collector format (prometheus_client replaces the file atomically)."""
    from prometheus_client import CollectorRegistry, write_to_textfile

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
