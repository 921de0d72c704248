"""Backup flows under the session's Prefect test server, with real borg, rsync, rclone and databases.

Each test saves its own block documents (layout under tmp_path, the session's
embedded PostgreSQL with a fresh schema prefix, a borg repository with a
passphrase, a backup plan, a local-path rclone remote) and passes their names
to the flows, as a deployment would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest
from labpipe.backup.simulate import tree_checksums, write_lab_share


def _db_url(target) -> str:
    return f"postgresql://{target.user}@:{target.port}/{target.dbname}?host={target.host}"


def configure(tmp_path: Path, lab_db, init: bool = True, **plan_overrides) -> dict:
    """Save this test's blocks and create the repository (as `labpipe backup init` does, unless ``init`` is
    false); returns the block names for the flows' parameters."""
    from labpipe.backup.settings import BackupPlan, RcloneRemote
    from labpipe.blocks import LabDatabase, StorageLayout
    from labpipe.blocks.backup import BackupRepository, NightlyBackup, OffsiteRemote
    from labpipe.layout import Layout

    name = f"t-{uuid.uuid4().hex[:8]}"
    roots = Layout.default(tmp_path / "home").ensure()
    StorageLayout(**roots.model_dump()).save(name)
    LabDatabase(url=_db_url(lab_db.target), schema_prefix=lab_db.prefix).save(name)
    BackupRepository(passphrase="correct horse battery staple", lock_wait=2).save(name)
    plan = {"compression": "zstd,3", "proof_sample_files": 5, **plan_overrides}
    NightlyBackup(**BackupPlan(**plan).model_dump()).save(name)
    OffsiteRemote(**RcloneRemote(type="local", path=str(tmp_path / "offsite")).model_dump()).save(name)
    if init:
        from labpipe.blocks.backup import borg_client

        borg_client(name, roots).init()
    return {
        "names": dict(repository_block=name, plan_block=name, remote_block=name, layout_block=name, db_block=name),
        "roots": roots,
        "name": name,
    }


def _share(roots) -> dict[str, str]:
    """Mixed lab data in the share root (and a state database in the dumps root)."""
    sums = write_lab_share(roots.share.parent / "sim", tif_mb=1.0, csv_mb=0.4, video_mb=0.4, dump_mb=0.2)
    (roots.share.parent / "sim" / "share").rename(roots.share / "lab") if not (roots.share / "lab").exists() else None
    (roots.blobs / "ab" / "cd").mkdir(parents=True, exist_ok=True)
    (roots.blobs / "ab" / "cd" / "object.npy").write_bytes(os.urandom(50_000))
    (roots.radio / "archive" / "images").mkdir(parents=True, exist_ok=True)
    (roots.radio / "archive" / "images" / "mosaic.fits").write_bytes(os.urandom(20_000))
    return sums


@pytest.mark.slow
def test_backup_flow_end_to_end(tmp_path, lab_db):
    """Dumps, pulls, archive, proof, check, off-site copy; then a byte-identical restore and a cheap second run."""
    from labpipe.backup.borg import Borg
    from labpipe.backup.schema import tables
    from labpipe.blocks.backup import repository
    from labpipe.config import get_settings
    from labpipe.flows.backup import backup, restore

    cfg = configure(tmp_path, lab_db)
    roots = cfg["roots"]
    _share(roots)
    first = backup(**cfg["names"])
    assert first["status"] == "succeeded", first["problems"]
    assert [s["status"] for s in first["sources"]] == ["pulled"] * 3
    labels = {d["database"] for d in first["dumps"]}
    assert labels == {"lab", "prefect"}
    assert first["proof_ok"] and first["check_ok"]
    dumps_in_proof = {Path(p).name for p in first["proof"]["dumps"]}
    assert dumps_in_proof == {Path(d["path"]).name for d in first["dumps"]}  # every dump of the run read back

    # the database knows the run, its sources, and which archive proved each dump
    t = tables(lab_db)
    row = (t.BackupRun & {"run_id": first["run_id"]}).fetch1()
    assert row["status"] == "succeeded" and row["archive"] == first["archive"] and row["proof_ok"]
    assert len(t.BackupRun.Source & {"run_id": first["run_id"]}) == 3
    assert {r["archive"] for r in t.DatabaseDump.to_dicts()} == {first["archive"]}

    # off-site: the repository and the (empty) radio archive folder went to the remote and were checked
    assert {Path(r["folder"]).name for r in first["offsite"]} == {"borg", "archive"}
    assert all(r["differences"] == 0 for r in first["offsite"])
    assert (tmp_path / "offsite" / "borg-repository" / "config").is_file()
    assert (tmp_path / "offsite" / "archive" / "images" / "mosaic.fits").read_bytes() == (
        roots.radio / "archive" / "images" / "mosaic.fits"
    ).read_bytes()

    # whole-archive restore is byte-identical to what was backed up
    target = tmp_path / "restored"
    restored = restore(first["archive"], str(target), repository_block=cfg["name"], layout_block=cfg["name"])
    assert restored["verified"]
    assert tree_checksums(target) == tree_checksums(roots.backups / "staging")

    # unchanged data: the second archive adds almost nothing to the repository
    second = backup(run_dumps=False, offsite=False, **cfg["names"])
    assert second["status"] == "succeeded"
    assert second["stats"]["original_size"] == first["stats"]["original_size"]
    assert second["stats"]["deduplicated_size"] < 0.02 * first["stats"]["deduplicated_size"]
    borg = Borg(repository(cfg["name"]), backups_root=roots.backups, home=get_settings().home)
    assert [a["name"] for a in borg.archives("labpipe")] == [first["archive"], second["archive"]]
    report_files = sorted((roots.backups / "reports").glob("*.json"))
    assert len(report_files) == 2 and json.loads(report_files[-1].read_text())["archive"] == second["archive"]


def test_missing_source_fails_only_that_source(tmp_path, lab_db):
    """A missing source root fails with a clear message; the others are archived; the run ends failed."""
    from labpipe.backup.settings import BackupSource
    from labpipe.flows.backup import backup

    cfg = configure(tmp_path, lab_db)
    roots = cfg["roots"]
    _share(roots)
    sources = [
        BackupSource(name="share", path=str(roots.share)),
        BackupSource(name="gone", path=str(tmp_path / "unmounted-share")),
        BackupSource(name="dumps", path=str(roots.dumps)),
    ]
    cfg = configure(tmp_path, lab_db, sources=[s.model_dump() for s in sources])
    with pytest.raises(RuntimeError, match="unmounted-share"):
        backup(offsite=False, **cfg["names"])
    report = json.loads(sorted((cfg["roots"].backups / "reports").glob("*.json"))[-1].read_text())
    by_name = {s["name"]: s for s in report["sources"]}
    assert by_name["gone"]["status"] == "failed" and "does not exist" in by_name["gone"]["detail"]
    assert by_name["share"]["status"] == by_name["dumps"]["status"] == "pulled"
    assert report["archive"] and report["stats"]["nfiles"] > 0
    assert report["status"] == "failed"
    assert any("prune skipped" in n for n in report["notes"])


def test_diskwatch_flow_emits_events_at_thresholds(tmp_path, lab_db):
    """Thresholds above the real free space raise warning/critical events; lowering them emits 'ok'."""
    import shutil

    from labpipe.backup.settings import DiskThreshold, DiskWatchSettings
    from labpipe.blocks.backup import DiskWatch
    from labpipe.flows.backup import diskwatch
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    cfg = configure(tmp_path, lab_db)
    roots = cfg["roots"]
    free_gb = shutil.disk_usage(roots.scratch).free / 1e9
    watch = DiskWatchSettings(
        roots=["scratch", "backups"],
        tmpfs=[],
        incoming=["radio:incoming"],
        thresholds=[
            DiskThreshold(target="scratch", warning_free_gb=free_gb + 1000, critical_free_gb=free_gb - 1),
            DiskThreshold(target="backups", warning_free_gb=free_gb + 2000, critical_free_gb=free_gb + 1000),
        ],
    )
    (roots.radio / "incoming").mkdir(parents=True)
    for i in range(3):
        (roots.radio / "incoming" / f"2025-10-13T13:28:0{i}_sb00.hdf5").write_bytes(b"x")
    DiskWatch(**watch.model_dump()).save(cfg["name"])
    first = diskwatch(watch_block=cfg["name"], layout_block=cfg["name"])
    assert first["levels"] == {"scratch": "warning", "backups": "critical"}
    assert sorted(first["events"]) == ["labpipe.disk.critical", "labpipe.disk.warning"]
    assert first["incoming"] == {"radio:incoming": 3}
    prom = (roots.backups / "diskwatch" / "labpipe_disk.prom").read_text()
    assert 'labpipe_incoming_file_count{folder="radio:incoming"} 3.0' in prom

    watch.thresholds = [DiskThreshold(target="scratch", warning_free_gb=0.001), DiskThreshold(target="backups")]
    DiskWatch(**watch.model_dump()).save(cfg["name"], overwrite=True)
    second = diskwatch(watch_block=cfg["name"], layout_block=cfg["name"])
    assert second["levels"] == {"scratch": "ok", "backups": "ok"}
    assert sorted(second["events"]) == ["labpipe.disk.ok", "labpipe.disk.ok"]

    # the events reached the Prefect server, where automations see them
    names = {"labpipe.disk.warning", "labpipe.disk.critical", "labpipe.disk.ok"}
    seen: set[str] = set()
    with get_client(sync_client=True) as client:
        for _ in range(40):
            page = client.read_events(
                filter=EventFilter(
                    event=EventNameFilter(name=sorted(names)), resource=EventResourceFilter(id_prefix=["labpipe.disk."])
                ),
                limit=50,
            )
            seen = {e.event for e in page.events}
            if seen >= names:
                break
            time.sleep(0.5)
    assert seen >= names


CANCEL_SCRIPT = """
import sys
from labpipe.flows.backup import backup
backup(run_dumps=False, offsite=False, **{names})
"""


@pytest.mark.slow
def test_cancelled_run_stops_its_borg(tmp_path, lab_db):
    """SIGTERM to the flow process (how a worker cancels) stops its borg; the repository stays consistent.
    (rsync goes the same way: tests/lib/backup/test_proc.py.)"""
    from labpipe.backup.borg import Borg
    from labpipe.blocks.backup import repository
    from labpipe.config import get_settings
    from prefect.settings import PREFECT_API_URL

    cfg = configure(tmp_path, lab_db, compression="zstd,22")
    roots = cfg["roots"]
    big = roots.share / "video"
    big.mkdir(parents=True)
    for i in range(4):  # incompressible: zstd,22 takes many seconds on it
        (big / f"cam{i}.mp4").write_bytes(os.urandom(12_000_000))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "LABPIPE_HOME": str(get_settings().home)}
    script = CANCEL_SCRIPT.format(names=repr(cfg["names"]))
    flow_process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        borg = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and borg is None:
            for child in psutil.Process(flow_process.pid).children(recursive=True):
                try:
                    if "create" in child.cmdline() and child.name() == "borg":
                        borg = child
                except psutil.NoSuchProcess:
                    continue
            time.sleep(0.2)
        assert borg, "borg create never started: " + flow_process.stderr.read1(4000).decode(errors="replace")
        time.sleep(1.0)
        assert borg.is_running()
        flow_process.send_signal(signal.SIGTERM)  # what Prefect's process worker sends on cancellation
        _, alive = psutil.wait_procs([borg], timeout=30)
        assert not alive, "borg outlived its cancelled run"
        flow_process.wait(timeout=60)
    finally:
        if flow_process.poll() is None:
            os.killpg(flow_process.pid, signal.SIGKILL)
    borg = Borg(repository(cfg["name"]), backups_root=roots.backups, home=get_settings().home)
    assert all(h.state != "running" for h in borg.lock_holders())
    borg.break_stale_lock()
    assert borg.check(repository=True, last_archives=1).ok
    assert not [a for a in borg.archives("labpipe") if not a["name"].endswith(".checkpoint")]


def test_cli_reports_plainly(tmp_path):
    """`labpipe backup`: list on a fresh home says there is no repository yet; retention --dry-run lists the
    seed's keep-everything policies; break-lock on an unlocked repository does nothing."""
    from labpipe.cli.backup import app
    from typer.testing import CliRunner

    runner = CliRunner()
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 2 and "no borg repository there yet" in result.output
    result = runner.invoke(app, ["retention", "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["planned"] == [] and {p["rule"] for p in data["policies"]} == {"keep forever"}
    assert runner.invoke(app, ["break-lock"]).output.strip() == "the repository is not locked"
    result = runner.invoke(app, ["diskwatch"])
    assert result.exit_code == 0 and "/dev/shm" in result.output
