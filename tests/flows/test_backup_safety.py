"""Issue 13 items 2 and 3: the backup flows never create a repository, never touch a known repository that is
missing or was replaced, never copy over the off-site copy unchecked, and a failed check blocks prune.

Real borg, real rclone (a local-path remote) and the session's Prefect test server, as in test_backup.py.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.flows.test_backup import _share, configure


def _borg(cfg):
    from labpipe.blocks.backup import borg_client

    return borg_client(cfg["name"], cfg["roots"])


def _config_id(repo: Path) -> str:
    parser = configparser.ConfigParser()
    parser.read(repo / "config")
    return parser["repository"]["id"]


def _segments(repo: Path) -> dict[str, bytes]:
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted((repo / "data").rglob("*")) if p.is_file()}


def test_backup_flow_never_creates_a_repository(tmp_path, lab_db):
    """No implicit `borg init`: the nightly run on a location without a repository fails and creates nothing."""
    from labpipe.backup.errors import RepositoryMissing
    from labpipe.flows.backup import open_repository

    cfg = configure(tmp_path, lab_db, init=False)
    borg = _borg(cfg)
    with pytest.raises(RepositoryMissing, match="labpipe backup init"):
        open_repository.fn(borg)
    assert not (borg.local_path / "config").exists()


def test_unmounted_disk_never_replaces_the_offsite_copy(tmp_path, lab_db):
    """The issue's path: backup disk not mounted -> an empty repository -> rclone sync deletes the good copy.
    Now the run refuses (asking whether the disk is mounted) and the off-site copy keeps every segment."""
    from labpipe.backup.errors import RepositoryMissing
    from labpipe.flows.backup import backup, open_repository

    cfg = configure(tmp_path, lab_db, init=False)
    _share(cfg["roots"])
    borg = _borg(cfg)
    assert borg.init()
    first = backup(run_dumps=False, **cfg["names"])
    assert first["status"] == "succeeded", first["problems"]
    offsite = tmp_path / "offsite" / "borg-repository"
    good_id, good_segments = _config_id(offsite), _segments(offsite)
    assert good_id == _config_id(borg.local_path) and good_segments

    shutil.move(borg.local_path, tmp_path / "disk-unmounted")  # the mount point is there, empty
    borg.local_path.mkdir()
    with pytest.raises(RepositoryMissing, match="mounted"):
        open_repository.fn(borg)
    with pytest.raises(RuntimeError, match="mounted"):
        backup(run_dumps=False, **cfg["names"])
    assert not (borg.local_path / "config").exists()
    assert _config_id(offsite) == good_id and _segments(offsite) == good_segments

    # another repository at the known location (a different disk, or someone ran borg init by hand)
    shutil.rmtree(borg.local_path)
    subprocess.run(
        ["borg", "init", "--encryption=repokey-blake2", str(borg.local_path)],
        env=borg.env(),
        check=True,
        capture_output=True,
    )
    with pytest.raises(Exception, match="repository id"):
        open_repository.fn(borg)
    with pytest.raises(RuntimeError, match="repository id"):
        backup(run_dumps=False, **cfg["names"])
    assert _config_id(offsite) == good_id and _segments(offsite) == good_segments


def test_archive_offsite_checks_first_verifies_the_remote_id_and_keeps_the_previous_copy(tmp_path, lab_db):
    """The weekly archive-offsite flow: no sync of a repository whose check fails, none over a remote holding
    another repository; files deleted locally stay on the remote in a dated folder."""
    from labpipe.backup.settings import BackupPlan
    from labpipe.flows.backup import archive_offsite

    cfg = configure(tmp_path, lab_db)
    roots = cfg["roots"]
    _share(roots)
    borg = _borg(cfg)
    (tmp_path / "src" / "a").mkdir(parents=True)
    (tmp_path / "src" / "a" / "f.bin").write_bytes(b"x" * 100_000)
    borg.create("labpipe-2026-01-01T00:00:00", ["a"], cwd=tmp_path / "src", plan=BackupPlan(compression="none"))
    names = {
        k: v for k, v in cfg["names"].items() if k in ("remote_block", "repository_block", "layout_block", "plan_block")
    }
    archive_offsite(**names)
    offsite = tmp_path / "offsite"
    good = _segments(offsite / "borg-repository")
    assert good == _segments(borg.local_path)

    # a file deleted locally (an unmounted disk, a mistake) is not deleted off-site in one step
    mosaic = roots.radio / "archive" / "images" / "mosaic.fits"
    content = mosaic.read_bytes()
    mosaic.unlink()
    archive_offsite(**names)
    kept = [p for p in offsite.rglob("mosaic.fits") if p != offsite / "archive" / "images" / "mosaic.fits"]
    assert [p.read_bytes() for p in kept] == [content], list(offsite.rglob("*"))

    # a damaged repository is not copied over the good off-site copy
    segment = max((p for p in (borg.local_path / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    original = segment.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(Exception, match="check"):
        archive_offsite(**names)
    assert _segments(offsite / "borg-repository") == good

    # a remote holding another repository is refused
    segment.write_bytes(original)
    assert _segments(borg.local_path) == good
    remote_config = offsite / "borg-repository" / "config"
    remote_config.write_text(remote_config.read_text().replace(_config_id(borg.local_path), "ab" * 32))
    with pytest.raises(Exception, match="repository id"):
        archive_offsite(**names)
    assert "ab" * 32 in remote_config.read_text()


def test_cli_init_is_the_only_way_to_create_and_refuses_a_known_missing_repository(tmp_path, lab_db, monkeypatch):
    """`labpipe backup init` creates and records the repository; run again it says it exists; when the known
    repository is missing it refuses (is the disk mounted?) unless told --replace."""
    from labpipe.cli import backup as cli
    from typer.testing import CliRunner

    cfg = configure(tmp_path, lab_db, init=False)
    monkeypatch.setattr(cli, "_borg", lambda: _borg(cfg))
    runner = CliRunner()
    result = runner.invoke(cli.app, ["init"])
    assert result.exit_code == 0, result.output
    repo = _borg(cfg).local_path
    assert (repo / "config").is_file() and _config_id(repo) in result.output
    result = runner.invoke(cli.app, ["init"])
    assert result.exit_code == 0 and "exists already" in result.output
    shutil.rmtree(repo)
    result = runner.invoke(cli.app, ["init"])
    assert result.exit_code == 2 and "mounted" in result.output
    assert not repo.exists()
    result = runner.invoke(cli.app, ["init", "--replace"])
    assert result.exit_code == 0, result.output


def _flip_a_byte(repo: Path) -> tuple[Path, bytes]:
    segment = max((p for p in (repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    original = segment.read_bytes()
    data = bytearray(original)
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    return segment, original


@pytest.mark.slow
def test_failed_check_blocks_prune_and_compact_until_a_check_passes(tmp_path, lab_db):
    """Item 3: a failed `borg check` (here the borg-check flow) is recorded; the next nightly run does not prune
    or compact, says so, and emits the failure event; a passing check lifts the block."""
    from labpipe.backup.errors import RepositoryCorrupt
    from labpipe.flows.backup import backup, check

    cfg = configure(tmp_path, lab_db)
    _share(cfg["roots"])
    borg = _borg(cfg)
    first = backup(run_dumps=False, offsite=False, **cfg["names"])
    assert first["status"] == "succeeded", first["problems"]
    segment, original = _flip_a_byte(borg.local_path)
    names = {k: cfg["names"][k] for k in ("repository_block", "plan_block", "layout_block")}
    with pytest.raises(RepositoryCorrupt):
        check(**names)

    segment.write_bytes(original)  # the damage is gone (or was never real): the block stays until a check passes
    second = backup(run_dumps=False, offsite=False, **cfg["names"])
    assert second["prune"] is None, "pruned although the last check failed"
    assert any("prune and compact blocked" in note for note in second["notes"]), second["notes"]
    assert "labpipe.backup.check-failed" in second["events"]
    assert first["archive"] in [a["name"] for a in borg.archives("labpipe")]
    assert second["check_ok"]  # this run's check passed: the block is lifted

    third = backup(run_dumps=False, offsite=False, **cfg["names"])
    assert third["status"] == "succeeded", third["problems"]
    assert third["prune"] is not None and not any("blocked" in note for note in third["notes"])
    assert "labpipe.backup.check-failed" not in third["events"]
