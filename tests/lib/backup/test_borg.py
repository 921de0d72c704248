"""The borg client against real borg repositories: restore, dedup, prune rules, faults."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from labpipe.backup.errors import DiskFull, RepositoryCorrupt, RepositoryLocked, RepositoryMissing, WrongPassphrase
from labpipe.backup.settings import BackupPlan, BorgRepository
from labpipe.errors import ConflictError


def test_restore_is_byte_identical_and_unchanged_data_adds_almost_nothing(borg, lab_data, tmp_path):
    from labpipe.backup.proof import prove_restore, restore_archive
    from labpipe.backup.simulate import tree_checksums

    plan = BackupPlan(compression="zstd,3")
    assert borg.init() is True and borg.init() is False
    assert (tmp_path / "home" / "secrets").is_dir()  # the key export beside the passphrase
    first = borg.create("labpipe-a", ["share", "dumps"], cwd=lab_data, plan=plan)
    assert first.nfiles == len(tree_checksums(lab_data))
    assert first.compressed_size < first.original_size  # the .tif and .csv compress

    target = tmp_path / "restore"
    result = restore_archive(borg, "labpipe-a", target)
    assert result.verified and result.files == first.nfiles
    assert tree_checksums(target) == tree_checksums(lab_data)
    with pytest.raises(ConflictError, match="not an empty folder"):
        restore_archive(borg, "labpipe-a", target)

    second = borg.create("labpipe-b", ["share", "dumps"], cwd=lab_data, plan=plan)
    assert second.original_size == first.original_size
    assert second.deduplicated_size < 0.01 * first.deduplicated_size  # only metadata is new

    proof = prove_restore(
        borg,
        "labpipe-b",
        lab_data,
        sample=3,
        max_bytes=10**9,
        dumps=["dumps/sqlite-acquisition-20260210T020000.sqlite3"],
        workdir=tmp_path / "w",
    )
    assert proof.ok and len(proof.checked) == 4 and proof.dumps == ["dumps/sqlite-acquisition-20260210T020000.sqlite3"]

    # the proof notices a staging copy that no longer matches the archive
    tif = next(lab_data.rglob("*.tif"))
    data = bytearray(tif.read_bytes())
    data[-1] ^= 0xFF
    tif.write_bytes(bytes(data))
    proof = prove_restore(borg, "labpipe-b", lab_data, sample=100, max_bytes=10**9, dumps=[], workdir=tmp_path / "w")
    assert [m["path"] for m in proof.mismatches] == [str(tif.relative_to(lab_data))]


def test_prune_keeps_exactly_what_the_policy_says(borg, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("data")
    borg.init()
    stamps = [
        "2026-01-05T12:00",
        "2026-01-20T12:00",
        "2026-02-02T12:00",
        "2026-02-09T12:00",
        "2026-02-16T12:00",
        "2026-02-20T12:00",
        "2026-02-21T12:00",
        "2026-02-22T10:00",
        "2026-02-22T12:00",
    ]
    plan = BackupPlan(compression="lz4", keep_daily=3, keep_weekly=2, keep_monthly=2, archive_prefix="lab")
    for stamp in stamps:
        when = dt.datetime.fromisoformat(stamp)
        borg.create(f"lab-{stamp}", ["src"], cwd=tmp_path, plan=plan, timestamp=when)
    borg.create("other-2026-01-01", ["src"], cwd=tmp_path, plan=plan, timestamp=dt.datetime(2026, 1, 1))
    # daily: the newest of each of the 3 newest days (22 Feb 12:00, 21, 20). weekly (ISO weeks, newest first):
    # W08 (16-22 Feb) already has a kept archive, so W07 (9 Feb) and W06 (2 Feb). monthly: February already
    # kept, so January's newest (20 Jan); with no third month left, borg (>= 1.2) keeps the oldest archive
    # (5 Jan) as "monthly[oldest]". Prune never touches other prefixes.
    expected = {
        "lab-2026-02-22T12:00": "daily #1",
        "lab-2026-02-21T12:00": "daily #2",
        "lab-2026-02-20T12:00": "daily #3",
        "lab-2026-02-09T12:00": "weekly #1",
        "lab-2026-02-02T12:00": "weekly #2",
        "lab-2026-01-20T12:00": "monthly #1",
        "lab-2026-01-05T12:00": "monthly[oldest] #2",
    }
    dry = borg.prune(plan, dry_run=True)
    assert dry.kept == expected
    assert len(borg.archives()) == 10
    result = borg.prune(plan)
    assert result.kept == expected
    assert sorted(result.pruned) == ["lab-2026-02-16T12:00", "lab-2026-02-22T10:00"]
    assert {a["name"] for a in borg.archives()} == set(expected) | {"other-2026-01-01"}
    assert "compaction freed" in borg.compact()
    with pytest.raises(Exception, match="no keep_"):
        BackupPlan(keep_daily=0, keep_weekly=0, keep_monthly=0).keep_args()


def test_killed_create_leaves_a_consistent_repository_and_the_next_run_completes(borg, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        (src / f"video{i}.mp4").write_bytes(os.urandom(15_000_000))
    borg.init()
    cmd = [
        borg.repo.binary,
        "create",
        "--compression=zstd,19",
        "--checkpoint-interval=1",
        f"{borg.location}::killed",
        "src",
    ]
    process = subprocess.Popen(cmd, cwd=tmp_path, env=borg.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (Path(borg.location) / "lock.exclusive").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    assert process.poll() is None, "borg finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()

    holders = borg.lock_holders()
    assert [(h.pid, h.state) for h in holders] == [(process.pid, "dead")]
    assert borg.break_stale_lock() == holders  # dead process of this host: broken safely
    assert borg.lock_holders() == []
    stats = borg.create("after", ["src"], cwd=tmp_path, plan=BackupPlan(compression="lz4"))
    assert stats.nfiles == 3
    check = borg.check(repository=True, last_archives=5)
    assert check.ok, check.problems
    assert "after" in {a["name"] for a in borg.archives()}
    assert "killed" not in {a["name"] for a in borg.archives()}


def test_lock_of_a_running_process_is_never_broken(borg, tmp_path):
    borg.init()
    (tmp_path / "src").mkdir()
    holder = subprocess.Popen([borg.repo.binary, "with-lock", borg.location, "sleep", "20"], env=borg.env())
    try:
        deadline = time.monotonic() + 20
        while not borg.lock_holders() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [h.state for h in borg.lock_holders()] == ["running"]
        assert borg.break_stale_lock() == []
        with pytest.raises(RepositoryLocked, match=rf"pid {holder.pid} \(running\)"):
            borg.create("x", ["src"], cwd=tmp_path, plan=BackupPlan())
    finally:
        holder.kill()
        holder.wait()


def test_wrong_passphrase_and_missing_repository_are_reported(borg, tmp_path):
    from labpipe.backup.borg import Borg

    with pytest.raises(RepositoryMissing, match="no borg repository"):
        borg.archives()
    borg.init()
    wrong = Borg(
        BorgRepository(repository=borg.location, passphrase="not it"), backups_root=tmp_path, home=tmp_path / "home"
    )
    with pytest.raises(WrongPassphrase, match=str(borg.location)):
        wrong.archives()
    missing = Borg(BorgRepository(repository=borg.location), backups_root=tmp_path, home=tmp_path / "elsewhere")
    with pytest.raises(WrongPassphrase, match="no passphrase is configured"):
        missing.archives()


def test_corrupted_segment_is_reported(borg, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "stack.tif").write_bytes(os.urandom(3_000_000))
    borg.init()
    borg.create("a", ["src"], cwd=tmp_path, plan=BackupPlan(compression="lz4"))
    assert borg.check(repository=True, last_archives=1).ok
    segment = max((Path(borg.location) / "data").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    result = borg.check(repository=True)
    assert not result.ok and any("mismatch" in p or "integrity" in p.lower() for p in result.problems)
    with pytest.raises(RepositoryCorrupt, match="do not prune"):
        borg.raise_if_corrupt(result)
    with pytest.raises(RepositoryCorrupt):
        borg.extract("a", tmp_path / "out")


def test_full_destination_disk_is_reported(tmp_path, tmpfs_factory):
    from labpipe.backup.borg import Borg

    with tmpfs_factory(tmp_path / "small", 4):
        borg = Borg(
            BorgRepository(repository=str(tmp_path / "small" / "repo"), passphrase="p"),
            backups_root=tmp_path,
            home=tmp_path / "home",
        )
        borg.init()
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "big.mp4").write_bytes(os.urandom(8_000_000))
        with pytest.raises(DiskFull, match="no space left on the repository's disk") as info:
            borg.create("too-big", ["src"], cwd=tmp_path, plan=BackupPlan(compression="lz4"))
        assert str(tmp_path / "small" / "repo") in str(info.value)
        (tmp_path / "src" / "big.mp4").write_bytes(os.urandom(500_000))
        assert borg.create("fits", ["src"], cwd=tmp_path, plan=BackupPlan(compression="lz4")).nfiles == 1
        assert borg.check(repository=True, last_archives=1).ok
