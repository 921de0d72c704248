import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
from labpipe.files import sha256_file
from labpipe.ingest.consolidate import consolidate

SESSION = "alice/AB_M1_2026-01-05_sessAAAA1111"
SCAN = f"{SESSION}/scanAAAA1111"


def _stage(staging, setup, rel, content: bytes):
    path = staging / setup / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_files_move_into_their_scan_folder_with_checksums_and_setup(tmp_path):
    staging, share = tmp_path / "staging", tmp_path / "share"
    _stage(staging, "mini2p1", f"{SCAN}/stack.tif", b"tif-bytes")
    _stage(staging, "behavior1", f"{SCAN}/cam.mp4", b"video-bytes")
    report = consolidate(staging, share, min_age_s=0)
    assert sorted(m.path for m in report.moved) == sorted([f"{SCAN}/stack.tif", f"{SCAN}/cam.mp4"])
    assert report.rejected == []
    origin = json.loads((share / SCAN / ".origin.json").read_text())
    assert origin["files"]["stack.tif"] == sha256_file(share / SCAN / "stack.tif")
    assert {origin["setup"], *origin.get("other_setups", [])} == {"mini2p1", "behavior1"}
    assert not any(p.is_file() for p in staging.rglob("*"))


def test_a_different_file_of_the_same_name_is_never_overwritten(tmp_path):
    staging, share = tmp_path / "staging", tmp_path / "share"
    (share / SCAN).mkdir(parents=True)
    (share / SCAN / "stack.tif").write_bytes(b"original")
    staged = _stage(staging, "mini2p1", f"{SCAN}/stack.tif", b"something else")
    _stage(staging, "mini2p1", f"{SCAN}/other.tif", b"fine")
    report = consolidate(staging, share, min_age_s=0)
    assert (share / SCAN / "stack.tif").read_bytes() == b"original"
    assert staged.read_bytes() == b"something else"  # kept in staging, not lost
    assert "different file of the same name" in report.rejected[0].reason
    assert (share / SCAN / "other.tif").read_bytes() == b"fine"


def test_identical_file_already_in_place_counts_as_moved(tmp_path):
    staging, share = tmp_path / "staging", tmp_path / "share"
    (share / SCAN).mkdir(parents=True)
    (share / SCAN / "stack.tif").write_bytes(b"same")
    staged = _stage(staging, "aux1", f"{SCAN}/stack.tif", b"same")
    report = consolidate(staging, share, min_age_s=0)
    assert report.rejected == [] and not staged.exists()


def test_misnamed_staging_folders_and_unknown_setups_stay_and_are_reported(tmp_path):
    staging, share = tmp_path / "staging", tmp_path / "share"
    bad = _stage(staging, "mini2p1", "alice/AB_M1_2026-01-05_sessSHORT/scanAAAA1111/x.tif", b"x")
    unknown = _stage(staging, "mini9", f"{SCAN}/y.tif", b"y")
    report = consolidate(staging, share, min_age_s=0)
    assert bad.exists() and unknown.exists()
    reasons = " ".join(p.reason for p in report.rejected)
    assert "expected exactly 8 characters" in reasons and "unknown setup" in reasons
    assert not share.exists() or not any(share.rglob("*.tif"))


# --- issue 13 item 1: only quiet regular files move; nothing else is ever opened ---------------------------


def _entries(items):
    return {Path(item.path).name: item.reason for item in items}


def test_a_file_still_being_written_waits_and_nothing_is_lost_across_file_systems(tmp_path):
    """A writer keeps appending after a consolidation run: the bytes must all end up in one complete file."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's folder")
    staging = Path(tempfile.mkdtemp(prefix="labpipe-staging-", dir=shm))
    try:
        share = tmp_path / "share"
        source = staging / "mini2p1" / SCAN / "stack.tif"
        source.parent.mkdir(parents=True)
        with open(source, "wb") as writer:  # the acquisition program, still writing
            writer.write(b"first half ")
            writer.flush()
            report = consolidate(staging, share)
            writer.write(b"second half")
        assert source.read_bytes() == b"first half second half", "the source went while it was being written"
        assert not (share / SCAN / "stack.tif").exists()
        assert _entries(report.waiting)["stack.tif"] and not report.moved
    finally:
        shutil.rmtree(staging)


def test_a_file_open_for_writing_waits_even_when_it_looks_old(tmp_path):
    staging, share = tmp_path / "staging", tmp_path / "share"
    source = _stage(staging, "mini2p1", f"{SCAN}/stack.tif", b"partial")
    with open(source, "ab"):  # a local process holds it open for writing
        report = consolidate(staging, share, min_age_s=0)
    assert source.exists() and not (share / SCAN / "stack.tif").exists()
    assert "open for writing" in _entries(report.waiting)["stack.tif"]
    assert f"pid {os.getpid()}" in _entries(report.waiting)["stack.tif"]
    again = consolidate(staging, share, min_age_s=0)  # closed now: it moves
    assert [m.path for m in again.moved] == [f"{SCAN}/stack.tif"]


def test_a_recent_file_reports_its_age_and_moves_once_quiet(tmp_path):
    staging, share = tmp_path / "staging", tmp_path / "share"
    _stage(staging, "mini2p1", f"{SCAN}/stack.tif", b"x")
    report = consolidate(staging, share)  # default window: 120 s
    (waiting,) = report.waiting
    assert waiting.age_s is not None and 0 <= waiting.age_s < 120
    assert "120" in waiting.reason and not report.moved


def test_symlinks_fifos_sockets_and_devices_are_never_opened_and_are_rejected(tmp_path, monkeypatch):
    staging, share = tmp_path / "staging", tmp_path / "share"
    secret = tmp_path / "secret.key"
    secret.write_bytes(b"the ingest account can read this")
    scan = staging / "mini2p1" / SCAN
    scan.mkdir(parents=True)
    (scan / "link.tif").symlink_to(secret)
    (scan / "zero.tif").symlink_to("/dev/zero")
    (scan / "linked-folder").symlink_to(tmp_path)
    os.mkfifo(scan / "pipe.tif")
    listener = socket.socket(socket.AF_UNIX)
    monkeypatch.chdir(scan)  # a socket path must be short
    listener.bind("sock.tif")
    os.mknod(scan / "dev.tif", 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers
    (scan / "good.tif").write_bytes(b"real data")
    done = []
    worker = threading.Thread(target=lambda: done.append(consolidate(staging, share, min_age_s=0)), daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # unblock the reader of the FIFO so the test process can end
        os.close(os.open(scan / "pipe.tif", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("consolidate hung on a FIFO or a device")
    listener.close()
    report = done[0]
    rejected = _entries(report.rejected)
    assert "symbolic link" in rejected["link.tif"] and "symbolic link" in rejected["zero.tif"]
    assert "symbolic link" in rejected["linked-folder"]
    assert "FIFO" in rejected["pipe.tif"] and "socket" in rejected["sock.tif"] and "device" in rejected["dev.tif"]
    assert [m.path for m in report.moved] == [f"{SCAN}/good.tif"]
    assert sorted(p.name for p in (share / SCAN).iterdir()) == [".origin.json", "good.tif"]
    assert (scan / "link.tif").is_symlink() and secret.read_bytes() == b"the ingest account can read this"


def test_data_and_folder_are_fsynced_before_the_source_is_unlinked(tmp_path, monkeypatch):
    """Spies (the real calls still run): the moved inode and the share folder are flushed before the unlink."""
    staging, share = tmp_path / "staging", tmp_path / "share"
    source = _stage(staging, "mini2p1", f"{SCAN}/stack.tif", b"data")
    inode = source.stat().st_ino
    events = []
    real_fsync, real_unlink = os.fsync, os.unlink

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else st.st_ino))
        return real_fsync(fd)

    def unlink(path, *args, **kwargs):
        events.append(("unlink", Path(path).name))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "unlink", unlink)
    consolidate(staging, share, min_age_s=0)
    monkeypatch.undo()
    gone = events.index(("unlink", "stack.tif"))
    assert ("fsync", inode) in events[:gone], events
    assert ("fsync", "dir") in events[:gone], events


def test_folders_younger_than_the_window_stay(tmp_path):
    staging, share = tmp_path / "staging", tmp_path / "share"
    new_scan = staging / "mini2p1" / SESSION / "scanBBBB2222"
    new_scan.mkdir(parents=True)  # a setup has just created it and is about to write
    consolidate(staging, share)
    assert new_scan.is_dir()
    old = staging / "mini2p1" / "alice" / "AB_M1_2026-01-05_sessCCCC3333" / "scanCCCC3333"
    old.mkdir(parents=True)
    for folder in (old, old.parent, old.parent.parent):
        os.utime(folder, (time.time() - 3600, time.time() - 3600))
    consolidate(staging, share, min_age_s=60)  # ctime is fresh: an empty folder is only removed once quiet
    assert new_scan.is_dir()
    consolidate(staging, share, min_age_s=0)
    assert not new_scan.exists() and not old.exists()
