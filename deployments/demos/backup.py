"""Backup demo: one nightly backup of the demo's share, blobs and dumps on the backup pool, and its report.

The off-site remote is a local-path rclone remote under $LABPIPE_HOME/offsite (a
real rclone remote standing in for the lab's S3 or tape target); it is saved as
the ``default`` rclone remote block unless one exists.
"""

from __future__ import annotations

import json

from labpipe.deployments.demo import DemoContext, DemoResult

ORDER = 80


def _ensure_remote(ctx: DemoContext) -> str:
    from labpipe.blocks.backup import OffsiteRemote

    try:
        return OffsiteRemote.load("default").path
    except Exception:  # no saved remote yet: the demo's local one
        path = str(ctx.settings.home / "offsite")
        OffsiteRemote(type="local", path=path).save("default", overwrite=True)
        return path


def _ensure_repository(ctx: DemoContext, roots) -> None:
    """What `labpipe backup init` does once: the nightly run never creates a repository."""
    from labpipe.blocks.backup import borg_client

    borg = borg_client("default", roots)
    if borg.init():
        ctx.say(f"created the borg repository {borg.location} (`labpipe backup init`), id {borg.open()}")


def run(ctx: DemoContext) -> DemoResult:
    roots = ctx.layout.ensure()
    (roots.radio / "archive").mkdir(parents=True, exist_ok=True)
    offsite = _ensure_remote(ctx)
    _ensure_repository(ctx, roots)
    ctx.say(f"backing up {roots.share}, {roots.blobs} and {roots.dumps} into {roots.backups}/borg; off-site: {offsite}")
    flow_run = ctx.run("backup/nightly", timeout=1200)
    reports = sorted((roots.backups / "reports").glob("*.json"))
    if not reports:
        return DemoResult("backup", False, ["no backup report was written"])
    report = json.loads(reports[-1].read_text())
    stats = report.get("stats") or {}
    proof = report.get("proof") or {}
    lines = [
        f"archive {report['archive'] or '(none)'}: {report['status']} in {report['durations'].get('total', 0):.0f} s",
        "dumps: " + ", ".join(f"{d['database']} {'ok' if not d['error'] else 'FAILED'}" for d in report["dumps"]),
        "sources: " + ", ".join(f"{s['name']} {s['status']} ({s['files']} files)" for s in report["sources"]),
        f"sizes: {stats.get('original_size', 0) / 1e6:.1f} MB original, {stats.get('compressed_size', 0) / 1e6:.1f} MB "
        f"compressed, {stats.get('deduplicated_size', 0) / 1e6:.1f} MB new in the repository",
        f"restore proof: {len(proof.get('checked', []))} files and {len(proof.get('dumps', []))} dumps, "
        f"{'all match' if report.get('proof_ok') else 'MISMATCH'}; borg check: "
        f"{'ok' if report.get('check_ok') else 'PROBLEMS'}",
        "off-site: "
        + (
            ", ".join(f"{r['remote']} ({r['files checked']} files checked)" for r in report["offsite"])
            or "not configured"
        ),
        f"problems: {'; '.join(report['problems']) or 'none'}; summary artifact 'backup-summary', report {reports[-1]}",
    ]
    watch = ctx.run("diskwatch/every-5-min", timeout=300)
    lines.append("disk watch: see the 'diskwatch' artifact (events labpipe.disk.* at the thresholds)")
    ok = bool(flow_run.state and flow_run.state.is_completed()) and report["status"] == "succeeded"
    return DemoResult("backup", ok and bool(watch.state and watch.state.is_completed()), lines)
