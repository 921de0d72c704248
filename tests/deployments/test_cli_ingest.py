"""`labpipe ingest scan ROOT --json` as users run it: a real process, a real database."""

import json

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
