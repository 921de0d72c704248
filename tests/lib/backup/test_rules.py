"""The nightly backup's rules, asked directly: which dumps a proof covers, when prune and the off-site copy wait."""

from __future__ import annotations

from labpipe.backup import rules
from labpipe.backup.settings import BackupSource
from labpipe.layout import Layout


def test_a_proof_covers_this_runs_dumps_and_every_earlier_unproven_one_present_in_staging(tmp_path):
    roots = Layout.default(tmp_path / "home").ensure()
    staging = tmp_path / "staging"
    (staging / "dumps").mkdir(parents=True)
    for name in ("new.sql.gz", "old.sql.gz"):
        (staging / "dumps" / name).write_bytes(b"x")
    sources = [BackupSource(name="share", path=str(roots.share)), BackupSource(name="dumps", path=str(roots.dumps))]
    earlier = ["old.sql.gz", "gone.sql.gz"]
    paths, missing = rules.dumps_to_prove(
        sources, roots, staging, new=["new.sql.gz"], unproven=earlier, pulled=["share", "dumps"]
    )
    assert paths == ["dumps/new.sql.gz", "dumps/old.sql.gz"] and missing == ""  # gone.sql.gz is not in staging
    paths, _ = rules.dumps_to_prove(sources, roots, staging, new=["new.sql.gz"], unproven=[], pulled=["share"])
    assert paths == []  # the dumps source failed to pull this run: nothing of it to prove
    paths, missing = rules.dumps_to_prove(
        sources[:1], roots, staging, new=["new.sql.gz"], unproven=[], pulled=["share"]
    )
    assert paths == [] and "no source pulls the dumps root" in missing


def test_prune_waits_for_a_passing_check_and_skips_a_bad_day():
    assert rules.prune_verdict([], None) is None
    assert "this run had failures" in rules.prune_verdict(["pull share: rsync exit 23"], None)
    blocked = rules.prune_verdict([], {"what": "verify-data", "since": "2026-12-01"})
    assert "blocked" in blocked and "verify-data" in blocked and "2026-12-01" in blocked


def test_the_offsite_copy_waits_for_a_passing_check():
    assert rules.offsite_verdict(True, None) is None
    assert rules.offsite_verdict(False, None) is not None
    assert rules.offsite_verdict(None, None) is not None  # the check did not run
    assert rules.offsite_verdict(True, {"what": "check", "since": "2026-12-01"}) is not None  # an old failure stands
