"""Benchmark: the backup flow against plain ``borg create``, and zstd,22 vs auto,zstd,22 vs zstd,3.

A simulated lab share of mixed data (compressible .tif stacks and .csv tables,
incompressible .mp4 video, a database dump) is backed up

1. by plain ``borg create`` with the flow's options (zstd,22), the baseline;
2. by the backup flow (rsync pull into staging, borg create zstd,22, restore
   proof, prune, compact, check, records; no dumps, no off-site copy);
3. by plain ``borg create`` with auto,zstd,22 and with zstd,3,

each into a new repository. Last line: one JSON object with ``flow_s``,
``borg_s``, ``overhead`` (flow_s / borg_s - 1), and MB/s and final repository
size per compression setting.

    flock /tmp/labpipe-bench.lock .venv/bin/python tests/bench/backup.py [--mb 100]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _plain_create(home: Path, roots, compression: str, name: str) -> dict:
    from labpipe.backup.borg import Borg
    from labpipe.backup.settings import BackupPlan, BorgRepository

    borg = Borg(
        BorgRepository(repository=str(home.parent / f"repo-{name}"), passphrase="bench"),
        backups_root=roots.backups,
        home=home,
    )
    borg.init()
    started = time.monotonic()
    stats = borg.create(
        "bench", ["share", "blobs", "dumps"], cwd=roots.share.parent, plan=BackupPlan(compression=compression)
    )
    seconds = time.monotonic() - started
    final = int(borg.info()["unique_csize"])
    return {
        "compression": compression,
        "seconds": round(seconds, 2),
        "borg_seconds": round(stats.seconds, 2),
        "original_mb": round(stats.original_size / 1e6, 2),
        "mb_per_s": round(stats.original_size / 1e6 / seconds, 2),
        "final_mb": round(final / 1e6, 2),
        "ratio": round(final / stats.original_size, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=100.0, help="Size of the simulated share (MB).")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary folder.")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="lp-bench-backup-"))
    home = tmp / "home"
    os.environ["LABPIPE_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from labpipe.backup.simulate import write_lab_share
    from labpipe.blocks import lab_database
    from labpipe.flows.backup import backup
    from labpipe.layout import Layout
    from prefect.testing.utilities import prefect_test_harness

    mb = args.mb
    started = time.monotonic()
    write_lab_share(tmp / "sim", tif_mb=0.4 * mb, csv_mb=0.15 * mb, video_mb=0.35 * mb, dump_mb=0.1 * mb, sessions=4)
    roots = Layout.default(home).ensure()
    shutil.rmtree(roots.share)
    shutil.rmtree(roots.dumps)
    (tmp / "sim" / "share").rename(roots.share)
    (tmp / "sim" / "dumps").rename(roots.dumps)
    by_type: dict[str, float] = {}
    for path in tmp.rglob("*"):
        if path.is_file():
            by_type[path.suffix] = by_type.get(path.suffix, 0) + path.stat().st_size / 1e6
    print(
        f"simulated share in {time.monotonic() - started:.0f} s: "
        + ", ".join(f"{k} {v:.1f} MB" for k, v in sorted(by_type.items())),
        flush=True,
    )

    with prefect_test_harness(server_startup_timeout=300):
        lab_database(None, None)  # start the embedded database outside the timed run

        baseline = _plain_create(home, roots, "zstd,22", "plain-zstd22")
        print(f"plain borg create zstd,22: {baseline}", flush=True)

        started = time.monotonic()
        report = backup(
            run_dumps=False,
            offsite=False,
            repository_block=None,
            plan_block=None,
            remote_block=None,
            layout_block=None,
            db_block=None,
        )
        flow_s = time.monotonic() - started
        stages = {k: round(v, 2) for k, v in report["durations"].items()}
        print(f"backup flow: {flow_s:.1f} s ({report['status']}); stages {stages}", flush=True)

        settings = [baseline]
        for compression, name in (("auto,zstd,22", "auto-zstd22"), ("zstd,3", "zstd3")):
            settings.append(_plain_create(home, roots, compression, name))
            print(f"plain borg create {compression}: {settings[-1]}", flush=True)

    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    borg_s = baseline["seconds"]
    result = {
        "share_mb": round(sum(by_type.values()), 1),
        "flow_s": round(flow_s, 2),
        "borg_s": borg_s,
        "overhead": round(flow_s / borg_s - 1, 4),
        "flow_stages_s": stages,
        # the same ratio within the flow run itself: not disturbed by load changing between the two runs
        "overhead_vs_own_create": round(flow_s / stages["create"] - 1, 4),
        "compression": {
            s["compression"]: {"mb_per_s": s["mb_per_s"], "final_mb": s["final_mb"], "ratio": s["ratio"]}
            for s in settings
        },
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
