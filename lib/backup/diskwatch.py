"""Disk watch (DSA-110 monitoring): free space per root, tmpfs use, incoming file counts, growth rate.

``measure`` takes one sample; ``evaluate`` compares it with the thresholds
(default: scratch free < 200 GB warning, < 100 GB critical; /dev/shm use > 95 %
critical); ``History`` keeps samples in a small JSON file for the growth rate
(GB/day) and remembers the last alarm level of each target, so a flow can
announce changes. ``DiskCollector`` exports the same figures as Prometheus
gauges, measured afresh at every scrape; ``serve_metrics`` serves them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labpipe.backup.settings import GB, DiskThreshold, DiskWatchSettings
from labpipe.errors import ConfigError
from labpipe.files import atomic_write_bytes, atomic_write_text
from labpipe.layout import ROOT_DESCRIPTIONS, Layout

LEVELS = {"ok": 0, "warning": 1, "critical": 2}


@dataclass
class DiskSample:
    """One root or tmpfs: its file system's size and use."""

    target: str  # root name, or the tmpfs path
    path: str
    kind: str  # "root" or "tmpfs"
    total: int
    used: int
    free: int

    @property
    def used_percent(self) -> float:
        return 100.0 * self.used / self.total if self.total else 0.0


@dataclass
class Alarm:
    target: str
    level: str  # warning, critical
    metric: str  # free_gb, used_percent
    value: float
    threshold: float
    path: str

    @property
    def message(self) -> str:
        if self.metric == "free_gb":
            return f"{self.target} ({self.path}): {self.value:.1f} GB free, below {self.threshold:g} GB ({self.level})"
        return f"{self.target} ({self.path}): {self.value:.1f} % used, above {self.threshold:g} % ({self.level})"


@dataclass
class DiskReport:
    time: float
    samples: list[DiskSample] = field(default_factory=list)
    incoming: dict[str, int] = field(default_factory=dict)  # folder -> file count
    growth_gb_per_day: dict[str, float | None] = field(default_factory=dict)
    alarms: list[Alarm] = field(default_factory=list)
    levels: dict[str, str] = field(default_factory=dict)  # target -> ok / warning / critical

    def as_json(self) -> dict:
        data = asdict(self)
        data["alarms"] = [{**asdict(a), "message": a.message} for a in self.alarms]
        for sample, row in zip(self.samples, data["samples"], strict=True):
            row["used_percent"] = round(sample.used_percent, 3)
        return data


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _usage(target: str, path: Path, kind: str) -> DiskSample:
    usage = shutil.disk_usage(_existing(path))
    return DiskSample(target, str(path), kind, usage.total, usage.used, usage.free)


def _folder(layout: Layout, spec: str) -> tuple[str, Path]:
    root, _, sub = spec.partition(":")
    if root not in ROOT_DESCRIPTIONS:
        raise ConfigError(spec, f"incoming folder must be <root>:<folder>, root one of {sorted(ROOT_DESCRIPTIONS)}")
    return spec.rstrip(":"), Path(getattr(layout, root)) / sub


def count_files(folder: Path) -> int:
    """Regular files under ``folder`` (hidden ones, e.g. partial copies, not counted)."""
    count, stack = 0, [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        count += 1
        except FileNotFoundError:
            continue
    return count


def measure(layout: Layout, settings: DiskWatchSettings, *, now: float | None = None) -> DiskReport:
    """One sample of every configured root, tmpfs and incoming folder, with alarms (no growth yet)."""
    report = DiskReport(now if now is not None else time.time())
    for name in settings.roots:
        if name not in ROOT_DESCRIPTIONS:
            raise ConfigError(name, f"not a layout root; expected one of {sorted(ROOT_DESCRIPTIONS)}")
        report.samples.append(_usage(name, getattr(layout, name), "root"))
    for path in settings.tmpfs:
        if Path(path).exists():
            report.samples.append(_usage(path, Path(path), "tmpfs"))
    for spec in settings.incoming:
        label, folder = _folder(layout, spec)
        report.incoming[label] = count_files(folder)
    report.alarms, report.levels = evaluate(report.samples, settings.thresholds)
    return report


def evaluate(samples: list[DiskSample], thresholds: list[DiskThreshold]) -> tuple[list[Alarm], dict[str, str]]:
    """Alarms of the samples against the thresholds, and the level of every threshold's target."""
    by_target = {s.target: s for s in samples}
    alarms, levels = [], {}
    for rule in thresholds:
        sample = by_target.get(rule.target)
        if sample is None:
            continue
        free_gb, used = sample.free / GB, sample.used_percent
        found = []
        for level in ("critical", "warning"):
            limit = getattr(rule, f"{level}_free_gb")
            if limit is not None and free_gb < limit:
                found.append(Alarm(rule.target, level, "free_gb", free_gb, limit, sample.path))
                break
        for level in ("critical", "warning"):
            limit = getattr(rule, f"{level}_used_percent")
            if limit is not None and used > limit:
                found.append(Alarm(rule.target, level, "used_percent", used, limit, sample.path))
                break
        alarms += found
        levels[rule.target] = max((a.level for a in found), key=LEVELS.get, default="ok")
    return alarms, levels


class History:
    """Samples of used bytes per target over ``history_days``, and the last alarm levels, in one JSON file."""

    def __init__(self, path: Path, history_days: float) -> None:
        self.path, self.keep_seconds = Path(path), history_days * 86400
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        self.samples: list[dict] = data.get("samples", [])
        self.levels: dict[str, str] = data.get("levels", {})

    def growth(self, report: DiskReport, window_hours: float) -> dict[str, float | None]:
        """GB/day per target: the used-space change over the oldest sample within the window."""
        since = report.time - window_hours * 3600
        rates: dict[str, float | None] = {}
        for sample in report.samples:
            older = [s for s in self.samples if s["time"] >= since and sample.target in s["used"]]
            if not older or report.time - older[0]["time"] < 60:
                rates[sample.target] = None
                continue
            days = (report.time - older[0]["time"]) / 86400
            rates[sample.target] = round((sample.used - older[0]["used"][sample.target]) / GB / days, 3)
        return rates

    def add(self, report: DiskReport, window_hours: float = 24.0) -> dict[str, tuple[str, str]]:
        """Record a sample (and its growth rate); returns targets whose alarm level changed: target -> (old, new)."""
        report.growth_gb_per_day = self.growth(report, window_hours)
        self.samples.append({"time": report.time, "used": {s.target: s.used for s in report.samples}})
        self.samples = [s for s in self.samples if s["time"] >= report.time - self.keep_seconds]
        changed = {
            t: (self.levels.get(t, "ok"), lvl) for t, lvl in report.levels.items() if self.levels.get(t, "ok") != lvl
        }
        self.levels.update(report.levels)
        atomic_write_text(self.path, json.dumps({"samples": self.samples, "levels": self.levels}))
        return changed


def watch_once(layout: Layout, settings: DiskWatchSettings, history_file: Path) -> tuple[DiskReport, dict]:
    """Measure, add to the history (growth rate, level changes); returns the report and the level changes."""
    report = measure(layout, settings)
    changed = History(history_file, settings.history_days).add(report, settings.growth_window_hours)
    return report, changed


def days_until_full(sample: DiskSample, growth_gb_per_day: float | None) -> float | None:
    if not growth_gb_per_day or growth_gb_per_day <= 0:
        return None
    return round(sample.free / GB / growth_gb_per_day, 1)


# -- Prometheus ---------------------------------------------------------------------------------
class DiskCollector:
    """Prometheus collector measuring at every scrape (growth from the history file the flow keeps)."""

    def __init__(self, layout: Layout, settings: DiskWatchSettings, history_file: Path | None = None) -> None:
        self.layout, self.settings, self.history_file = layout, settings, history_file

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        report = measure(self.layout, self.settings)
        if self.history_file is not None:
            report.growth_gb_per_day = History(self.history_file, self.settings.history_days).growth(
                report, self.settings.growth_window_hours
            )
        yield from report_metrics(report, GaugeMetricFamily)


def report_metrics(report: DiskReport, family) -> list:
    """Gauge families for one report (``family`` is prometheus_client's GaugeMetricFamily)."""
    free = family("labpipe_disk_free_bytes", "Free space on the file system of a root", labels=["target", "path"])
    free_gb = family("labpipe_disk_free_gb", "Free space in GB (seed: scratch_disk_free_gb)", labels=["target"])
    total = family("labpipe_disk_total_bytes", "Size of the file system of a root", labels=["target", "path"])
    used = family("labpipe_disk_used_percent", "Used share of the file system", labels=["target", "kind"])
    tmpfs = family("labpipe_tmpfs_usage_percent", "tmpfs usage percentage", labels=["path"])
    incoming = family("labpipe_incoming_file_count", "Files waiting in an incoming folder", labels=["folder"])
    growth = family("labpipe_disk_growth_gb_per_day", "Growth of used space (GB/day)", labels=["target"])
    level = family("labpipe_disk_alarm_level", "Alarm level: 0 ok, 1 warning, 2 critical", labels=["target"])
    for s in report.samples:
        free.add_metric([s.target, s.path], s.free)
        free_gb.add_metric([s.target], s.free / GB)
        total.add_metric([s.target, s.path], s.total)
        used.add_metric([s.target, s.kind], s.used_percent)
        if s.kind == "tmpfs":
            tmpfs.add_metric([s.path], s.used_percent)
        if (rate := report.growth_gb_per_day.get(s.target)) is not None:
            growth.add_metric([s.target], rate)
    for folder, count in report.incoming.items():
        incoming.add_metric([folder], count)
    for target, name in report.levels.items():
        level.add_metric([target], LEVELS[name])
    return [free, free_gb, total, used, tmpfs, incoming, growth, level]


def registry_for(collector: DiskCollector):
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def serve_metrics(collector: DiskCollector, address: str, port: int):
    """Serve the gauges on http://address:port/metrics in a background thread; returns (server, thread)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=address, registry=registry_for(collector))


def write_textfile(collector: DiskCollector, path: Path) -> None:
    """The same gauges in node_exporter's textfile-collector format (replaced atomically, fsynced first)."""
    from prometheus_client import generate_latest

    atomic_write_bytes(Path(path), generate_latest(registry_for(collector)))


def report_time(report: DiskReport) -> str:
    return dt.datetime.fromtimestamp(report.time).isoformat(timespec="seconds")
