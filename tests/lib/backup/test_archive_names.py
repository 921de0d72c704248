"""Issue 13 item 9: no file name reaches a shell or a filter pattern on the way to the off-site archive.

Retention entries are named by whatever wrote them. Each hostile name is archived, verified and deleted by the
retention policy with a real rclone remote (a local path); no canary file appears (nothing ran), every copy is
byte-identical, and a copy that differs is caught by the per-file check (a filter pattern matching nothing
would have called it fine).
"""

from __future__ import annotations

import os
import time

from labpipe.backup.settings import RcloneRemote, RetentionPolicies, RetentionPolicy
from labpipe.layout import Layout

HOSTILE = [
    "x$(touch CANARY)",
    "y`touch CANARY2`;touch CANARY3",
    'a"b;c',
    "[x]{y}*.bin",
    "new\nline.bin",
    "é" * 100 + "n" * 51 + ".bin",  # 255 bytes in UTF-8
]


def _entries(folder, age_days: float) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for i, name in enumerate(HOSTILE):
        data = os.urandom(5_000 + i)
        (folder / name).write_bytes(data)
        old = time.time() - age_days * 86400
        os.utime(folder / name, (old, old))
        contents[name] = data
    return contents


def test_hostile_names_are_archived_verified_and_deleted_without_a_shell(tmp_path, lab_db, monkeypatch):
    from labpipe.backup.archive import RcloneArchive
    from labpipe.backup.retention import Ledger, apply_retention, plan_retention
    from labpipe.backup.schema import tables

    assert len(HOSTILE[-1].encode()) == 255
    monkeypatch.chdir(tmp_path)  # where `touch CANARY` would land if a shell ever read a name
    roots = Layout.default(tmp_path / "home").ensure()
    contents = _entries(roots.radio / "incoming", age_days=30)
    policies = RetentionPolicies(
        policies=[RetentionPolicy(root="radio", folder="incoming", pattern="*", keep_days=7, action="archive-delete")]
    )
    plan = plan_retention(roots, policies)
    assert sorted(c.path.name for c in plan.candidates) == sorted(HOSTILE)
    archive = RcloneArchive(RcloneRemote(type="local", path=str(tmp_path / "tape")))
    outcomes = apply_retention(plan, archive, Ledger(tables(lab_db), tmp_path / "retention.jsonl"), "r")
    assert not list(tmp_path.glob("CANARY*")), "a file name was run by a shell"
    assert {o.candidate.path.name: o.status for o in outcomes} == dict.fromkeys(HOSTILE, "deleted"), [
        (o.candidate.path.name, o.status, o.detail) for o in outcomes
    ]
    for name, data in contents.items():
        assert (tmp_path / "tape" / "r" / "radio" / "incoming" / name).read_bytes() == data
        assert not (roots.radio / "incoming" / name).exists()


def test_the_per_file_check_compares_exactly_that_file(tmp_path, monkeypatch):
    """A copy that differs (same size and time, other bytes) is caught for every hostile name."""
    from labpipe.backup.archive import RcloneArchive

    monkeypatch.chdir(tmp_path)
    contents = _entries(tmp_path / "local", age_days=1)
    archive = RcloneArchive(RcloneRemote(type="local", path=str(tmp_path / "tape")))
    for name in HOSTILE:
        location, check = archive.copy_entry(tmp_path / "local" / name, "one", name)
        assert check.ok, (name, check)
        copy = tmp_path / "tape" / "one" / name
        assert copy.read_bytes() == contents[name]
        stat = copy.stat()
        copy.write_bytes(bytes(b ^ 0xFF for b in contents[name]))  # damaged off-site, size and mtime as before
        os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        _, check = archive.copy_entry(tmp_path / "local" / name, "one", name)
        assert not check.ok, f"damaged copy of {name!r} passed the check"
    assert not list(tmp_path.glob("CANARY*")), "a file name was run by a shell"
