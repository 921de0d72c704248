"""Disk watch on real (small tmpfs) file systems: thresholds, tmpfs use, growth, Prometheus exporter."""

from __future__ import annotations

import json
import shutil
import socket
import time

import httpx
from labpipe.backup.settings import DiskThreshold, DiskWatchSettings
from labpipe.layout import Layout


def _fill(path, megabytes: float) -> None:
    path.write_bytes(b"\0" * int(megabytes * 1e6))


def test_alarms_fire_at_the_thresholds_on_a_small_file_system(tmp_path, tmpfs_factory):
    from labpipe.backup.diskwatch import watch_once

    roots = Layout.default(tmp_path / "home")
    with tmpfs_factory(tmp_path / "home" / "data" / "scratch", 20), tmpfs_factory(tmp_path / "shm", 10):
        roots.ensure()
        # the seed's thresholds scaled down: warning below 12 MB free, critical below 6 MB; tmpfs critical > 95 %
        settings = DiskWatchSettings(
            roots=["scratch"],
            tmpfs=[str(tmp_path / "shm")],
            incoming=[],
            thresholds=[
                DiskThreshold(target="scratch", warning_free_gb=0.012, critical_free_gb=0.006),
                DiskThreshold(target=str(tmp_path / "shm"), critical_used_percent=95),
            ],
        )
        history = tmp_path / "history.json"
        report, changed = watch_once(roots, settings, history)
        assert report.levels == {"scratch": "ok", str(tmp_path / "shm"): "ok"} and changed == {}

        _fill(roots.scratch / "a.ms", 9)  # ~11 MB free
        report, changed = watch_once(roots, settings, history)
        assert report.levels["scratch"] == "warning" and changed == {"scratch": ("ok", "warning")}
        assert [a.metric for a in report.alarms] == ["free_gb"]

        _fill(roots.scratch / "b.ms", 6)  # ~5 MB free
        _fill(tmp_path / "shm" / "sb00.ms", shutil.disk_usage(tmp_path / "shm").total * 0.97 / 1e6)  # 97 %
        report, changed = watch_once(roots, settings, history)
        assert report.levels == {"scratch": "critical", str(tmp_path / "shm"): "critical"}
        assert changed == {"scratch": ("warning", "critical"), str(tmp_path / "shm"): ("ok", "critical")}
        shm = next(a for a in report.alarms if a.target == str(tmp_path / "shm"))
        assert shm.metric == "used_percent" and shm.value > 95 and "above 95 %" in shm.message

        (roots.scratch / "b.ms").unlink()
        (roots.scratch / "a.ms").unlink()
        report, changed = watch_once(roots, settings, history)
        assert changed["scratch"] == ("critical", "ok")


def test_growth_rate_and_incoming_counts(tmp_path):
    from labpipe.backup.diskwatch import days_until_full, measure, watch_once

    roots = Layout.default(tmp_path).ensure()
    (roots.radio / "incoming").mkdir()
    for i in range(4):
        (roots.radio / "incoming" / f"2025-10-13T13:28:03_sb{i:02d}.hdf5").write_bytes(b"uvh5")
    (roots.radio / "incoming" / ".partial.hdf5").write_bytes(b"not yet")
    settings = DiskWatchSettings(roots=["radio"], tmpfs=[], incoming=["radio:incoming"], thresholds=[])
    now = measure(roots, settings)
    used = now.samples[0].used
    # a sample six hours ago with 1.5 GB less used: 6 GB/day
    history = tmp_path / "history.json"
    history.write_text(json.dumps({"samples": [{"time": now.time - 6 * 3600, "used": {"radio": used - 1.5e9}}]}))
    report, _ = watch_once(roots, settings, history)
    assert report.incoming == {"radio:incoming": 4}
    assert abs(report.growth_gb_per_day["radio"] - 6.0) < 0.1
    assert abs(days_until_full(report.samples[0], 6.0) - report.samples[0].free / 1e9 / 6.0) < 0.1
    assert len(json.loads(history.read_text())["samples"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prometheus_exporter_serves_live_gauges(tmp_path):
    from labpipe.backup.diskwatch import DiskCollector, serve_metrics

    roots = Layout.default(tmp_path).ensure()
    (roots.staging / "mini2p1").mkdir()
    (roots.staging / "mini2p1" / "scan.tif").write_bytes(b"tif")
    settings = DiskWatchSettings(
        roots=["scratch", "backups"],
        tmpfs=["/dev/shm"],
        incoming=["staging:"],
        thresholds=[DiskThreshold(target="scratch", warning_free_gb=1e9)],
    )
    port = _free_port()
    server, thread = serve_metrics(DiskCollector(roots, settings), "127.0.0.1", port)
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        free = shutil.disk_usage(roots.scratch).free
        line = next(
            ln for ln in text.splitlines() if ln.startswith('labpipe_disk_free_bytes{path="' + str(roots.scratch))
        )
        assert abs(float(line.rsplit(" ", 1)[1]) - free) < 200e6  # measured at the scrape; others write meanwhile
        assert 'labpipe_disk_alarm_level{target="scratch"} 1.0' in text
        assert 'labpipe_incoming_file_count{folder="staging"} 1.0' in text
        assert 'labpipe_tmpfs_usage_percent{path="/dev/shm"}' in text
        (roots.staging / "mini2p1" / "scan2.tif").write_bytes(b"tif")
        time.sleep(0.1)
        assert (
            'labpipe_incoming_file_count{folder="staging"} 2.0'
            in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        )
    finally:
        server.shutdown()
        thread.join(5)
