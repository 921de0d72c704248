"""Retention with a real rclone remote (a local path) and the lab database: archive, verify, record, delete."""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest
from labpipe.backup.settings import RcloneRemote, RetentionPolicies, RetentionPolicy
from labpipe.layout import Layout


def _radio_tree(home) -> Layout:
    """A DSA-110 radio tree with old and new entries (ages set through mtimes)."""
    roots = Layout.default(home).ensure()
    now = time.time()
    incoming = roots.radio / "incoming"
    incoming.mkdir(parents=True)
    for day, age in (("2025-10-01", 30), ("2025-10-20", 11), ("2025-10-30", 1)):
        for sb in range(2):
            path = incoming / f"{day}T13:28:03_sb{sb:02d}.hdf5"
            path.write_bytes(os.urandom(30_000))
            os.utime(path, (now - age * 86400, now - age * 86400))
    science = roots.radio / "ms" / "science" / "2025-10-01"
    (science / "2025-10-01T13:28:03.ms" / "table.f0").parent.mkdir(parents=True)
    for name in ("table.f0", "table.dat"):
        part = science / "2025-10-01T13:28:03.ms" / name
        part.write_bytes(os.urandom(20_000))
        os.utime(part, (now - 40 * 86400, now - 40 * 86400))
    return roots


def _policies() -> RetentionPolicies:
    return RetentionPolicies(
        policies=[
            RetentionPolicy(root="radio", folder="incoming", pattern="*.hdf5", keep_days=7, action="archive-delete"),
            RetentionPolicy(
                root="radio", folder="ms/science", pattern="????-??-??", keep_days=7, action="archive-delete"
            ),
            RetentionPolicy(root="radio", folder="images/mosaics", keep_days=None, note="indefinite"),
        ]
    )


def test_default_policy_keeps_everything(tmp_path):
    from labpipe.backup.retention import plan_retention

    roots = _radio_tree(tmp_path)
    plan = plan_retention(roots, RetentionPolicies())
    assert plan.candidates == []
    assert {row["rule"] for row in plan.kept} == {"keep forever"}
    assert next(r for r in plan.kept if r["policy"] == "radio/incoming/*")["entries"] == 6


def test_retention_archives_verifies_records_then_deletes(tmp_path, lab_db):
    from labpipe.backup.archive import RcloneArchive
    from labpipe.backup.retention import Ledger, apply_retention, plan_retention
    from labpipe.backup.schema import tables
    from labpipe.files import sha256_file

    roots = _radio_tree(tmp_path)
    before = {p: sha256_file(p) for p in roots.radio.rglob("*") if p.is_file()}
    plan = plan_retention(roots, _policies())  # the dry run
    due = sorted(c.rel for c in plan.candidates)
    assert due == [
        "incoming/2025-10-01T13:28:03_sb00.hdf5",
        "incoming/2025-10-01T13:28:03_sb01.hdf5",
        "incoming/2025-10-20T13:28:03_sb00.hdf5",
        "incoming/2025-10-20T13:28:03_sb01.hdf5",
        "ms/science/2025-10-01",
    ]
    assert all(p.exists() for p in before)  # planning touched nothing

    remote = RcloneRemote(type="local", path=str(tmp_path / "tape"))
    ledger = Ledger(tables(lab_db), tmp_path / "retention.jsonl")
    outcomes = apply_retention(plan, RcloneArchive(remote), ledger, "retention")
    assert [o.status for o in outcomes] == ["deleted"] * 5
    for path, digest in before.items():
        rel = path.relative_to(roots.radio)
        if any(str(rel).startswith(d) for d in due):
            assert not path.exists()
            assert sha256_file(tmp_path / "tape" / "retention" / "radio" / rel) == digest
        else:
            assert path.exists()  # young entries stay
    rows = tables(lab_db).RetentionAction.to_dicts()
    assert sorted(r["path"] for r in rows) == due
    assert all(r["status"] == "deleted" and r["verified"] and r["deleted"] for r in rows)
    ms = next(r for r in rows if r["path"] == "ms/science/2025-10-01")
    assert ms["location"] == f"labpipe-archive:{tmp_path}/tape/retention/radio/ms/science/2025-10-01"
    assert len(tables(lab_db).RetentionAction.File & {"action_id": ms["action_id"]}) == 2
    steps = [line for line in (tmp_path / "retention.jsonl").read_text().splitlines()]
    assert len(steps) == 5 * 3  # copying, verified, deleted for each entry


def test_retention_never_deletes_what_was_not_verified(tmp_path, lab_db):
    from labpipe.backup.archive import RcloneArchive
    from labpipe.backup.retention import Ledger, apply_retention, plan_retention
    from labpipe.backup.schema import tables

    roots = _radio_tree(tmp_path)
    plan = plan_retention(roots, _policies())
    blocked = tmp_path / "tape-is-a-file"
    blocked.write_text("the remote path is a file: every copy fails")
    ledger = Ledger(tables(lab_db), tmp_path / "retention.jsonl")
    outcomes = apply_retention(plan, RcloneArchive(RcloneRemote(type="local", path=str(blocked))), ledger, "r")
    assert [o.status for o in outcomes] == ["failed"] * 5
    assert all(c.path.exists() for c in plan.candidates)
    assert {r["status"] for r in tables(lab_db).RetentionAction.to_dicts()} == {"failed"}

    class WriterDuringCopy(RcloneArchive):
        """A real archive; an acquisition writes into the entry while it is being copied."""

        def copy_entry(self, local, *parts):
            result = super().copy_entry(local, *parts)
            if local.is_dir():
                (local / "2025-10-01T13:28:03.ms" / "table.f0").write_bytes(b"rewritten by a late writer")
            return result

    remote = RcloneRemote(type="local", path=str(tmp_path / "tape"))
    outcomes = apply_retention(plan, WriterDuringCopy(remote), ledger, "r")
    by_entry = {o.candidate.rel: o.status for o in outcomes}
    assert by_entry["ms/science/2025-10-01"] == "changed"
    assert (roots.radio / "ms/science/2025-10-01/2025-10-01T13:28:03.ms/table.dat").exists()
    assert sum(status == "deleted" for status in by_entry.values()) == 4

    with pytest.raises(Exception, match="no archive remote"):
        apply_retention(plan_retention(_radio_tree(tmp_path / "again"), _policies()), None, ledger, "r")
    with pytest.raises(Exception, match="lab database is needed"):
        Ledger(None, tmp_path / "x.jsonl")


def test_policy_validation_names_the_bad_field():
    with pytest.raises(ValueError, match="not a layout root"):
        RetentionPolicy(root="scratchy", folder="x")
    with pytest.raises(ValueError, match="relative to its root"):
        RetentionPolicy(root="radio", folder="../etc")
    assert dt.timedelta(days=RetentionPolicy(root="radio", folder="x", keep_days=7).keep_days).days == 7
