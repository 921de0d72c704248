"""`labpipe ingest scan ROOT --json` as users run it: a real process, a real database."""

import json
import os
import subprocess
import sys
from pathlib import Path

from labpipe.ingest.simulate import simulate_share


def test_scan_json_report_then_idempotent_rerun(lab_db, labpipe_cli, tmp_path):
    sim = simulate_share(tmp_path / "share", sessions_per_user=1, light=True)
    first = labpipe_cli(tmp_path / "home", "ingest", "scan", str(tmp_path / "share"), "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert {s["folder"] for s in report["sessions"]} == set(sim.sessions)
    assert {r["path"] for r in report["rejected"]} == set(sim.malformed)
    assert all(r["reason"] for r in report["rejected"])
    assert (report["inserted"], report["skipped"]) == (len(sim.sessions), 0)
    second = json.loads(labpipe_cli(tmp_path / "home", "ingest", "scan", str(tmp_path / "share"), "--json").stdout)
    assert (second["inserted"], second["skipped"]) == (0, len(sim.sessions))


def test_scan_dry_run_and_a_missing_root(lab_db, labpipe_cli, tmp_path):
    simulate_share(tmp_path / "share", sessions_per_user=1, light=True)
    dry = json.loads(
        labpipe_cli(tmp_path / "home", "ingest", "scan", str(tmp_path / "share"), "--json", "--dry-run").stdout
    )
    assert dry["inserted"] == 0 and len(dry["sessions"]) == 3
    missing = labpipe_cli(tmp_path / "home", "ingest", "scan", str(tmp_path / "nowhere"))
    assert missing.returncode != 0 and "does not exist" in missing.stderr


def test_consolidate_reports_moved_waiting_and_rejected_as_json(tmp_path):
    """``labpipe ingest consolidate --json`` (issue 13 item 1): the flow's first step, by hand."""
    staging, share = tmp_path / "staging", tmp_path / "share"
    scan = staging / "mini2p1" / "alice" / "AB_M1_2026-01-05_sessAAAA1111" / "scanAAAA1111"
    scan.mkdir(parents=True)
    (scan / "done.tif").write_bytes(b"complete")
    (scan / "link.tif").symlink_to(tmp_path / "elsewhere")

    def run(*args):
        env = dict(os.environ, LABPIPE_HOME=str(tmp_path / "home"), PREFECT_API_URL="http://127.0.0.1:9/api")
        argv = [sys.executable, "-m", "labpipe.cli", "ingest", "consolidate", *args]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    first = run("--staging", str(staging), "--share", str(share), "--json")  # default window: 120 s
    assert first["moved"] == [] and [Path(w["path"]).name for w in first["waiting"]] == ["done.tif"]
    assert first["waiting"][0]["age_s"] < 120 and "120 s" in first["waiting"][0]["reason"]
    assert [(Path(r["path"]).name, "symbolic link" in r["reason"]) for r in first["rejected"]] == [("link.tif", True)]
    second = run("--staging", str(staging), "--share", str(share), "--min-age", "0", "--json")
    assert [m["path"] for m in second["moved"]] == [f"{scan.relative_to(staging / 'mini2p1').as_posix()}/done.tif"]
    assert (share / second["moved"][0]["path"]).read_bytes() == b"complete"


def test_populate_behavior_and_jobs_name_another_sessions_trial_file(lab_db, labpipe_cli, tmp_path):
    import shutil

    from labpipe.behavior.schema import tables as behavior_tables
    from labpipe.calcium.simulate import RecordingSpec
    from labpipe.ingest.run import ingest_share
    from labpipe.ingest.simulate_science import simulate_science_share

    spec = RecordingSpec(frames=900, height=32, width=32, cells=3, seed=2)
    share = simulate_science_share(tmp_path / "share", 2, spec=spec, video=False)
    good, bad = share.scans
    (share.root / bad.folder / bad.bpod_file).unlink()
    shutil.copy(share.root / good.folder / good.bpod_file, share.root / bad.folder / good.bpod_file)
    ingest_share(lab_db, share.root)
    run = labpipe_cli(tmp_path / "home", "ingest", "populate", "behavior", "--share", str(share.root))
    assert run.returncode == 0 and run.stdout.startswith("{"), (run.stdout[:2000], run.stderr[-2000:])
    result = json.loads(run.stdout)
    assert result["computed"] == {"BehaviorSession": 1} and len(result["errors"]) == 1
    assert good.bpod_file in result["errors"][0]["error"] and "another session" in result["errors"][0]["error"]
    assert len(behavior_tables(lab_db).BehaviorSession()) == 1
    jobs = json.loads(labpipe_cli(tmp_path / "home", "ingest", "jobs", "--json").stdout)
    assert [(j["table"], j["status"]) for j in jobs] == [("BehaviorSession", "error")]
