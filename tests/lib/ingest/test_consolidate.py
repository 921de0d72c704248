import json

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
    report = consolidate(staging, share)
    assert sorted(report.moved) == sorted([f"{SCAN}/stack.tif", f"{SCAN}/cam.mp4"])
    assert report.problems == []
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
    report = consolidate(staging, share)
    assert (share / SCAN / "stack.tif").read_bytes() == b"original"
    assert staged.read_bytes() == b"something else"  # kept in staging, not lost
    assert "different file of the same name" in report.problems[0].reason
    assert (share / SCAN / "other.tif").read_bytes() == b"fine"


def test_identical_file_already_in_place_counts_as_moved(tmp_path):
    staging, share = tmp_path / "staging", tmp_path / "share"
    (share / SCAN).mkdir(parents=True)
    (share / SCAN / "stack.tif").write_bytes(b"same")
    staged = _stage(staging, "aux1", f"{SCAN}/stack.tif", b"same")
    report = consolidate(staging, share)
    assert report.problems == [] and not staged.exists()


def test_misnamed_staging_folders_and_unknown_setups_stay_and_are_reported(tmp_path):
    staging, share = tmp_path / "staging", tmp_path / "share"
    bad = _stage(staging, "mini2p1", "alice/AB_M1_2026-01-05_sessSHORT/scanAAAA1111/x.tif", b"x")
    unknown = _stage(staging, "mini9", f"{SCAN}/y.tif", b"y")
    report = consolidate(staging, share)
    assert bad.exists() and unknown.exists()
    reasons = " ".join(p.reason for p in report.problems)
    assert "expected exactly 8 characters" in reasons and "unknown setup" in reasons
    assert not share.exists() or not any(share.rglob("*.tif"))
