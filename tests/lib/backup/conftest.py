"""Fixtures of the backup lib tests: a real borg repository with a passphrase, small mixed lab data."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest


@pytest.fixture
def borg(tmp_path):
    """A new repokey-blake2 repository under tmp_path (not yet created: ``borg.init()``)."""
    from labpipe.backup.borg import Borg
    from labpipe.backup.settings import BorgRepository

    repo = BorgRepository(repository=str(tmp_path / "repo"), passphrase="s3cret passphrase", lock_wait=1)
    return Borg(repo, backups_root=tmp_path, home=tmp_path / "home")


@pytest.fixture
def lab_data(tmp_path) -> Path:
    """``<tmp>/data/{share,dumps}`` with .tif, .csv, .mp4 and a SQLite dump."""
    from labpipe.backup.simulate import write_lab_share

    write_lab_share(tmp_path / "data", tif_mb=0.6, csv_mb=0.2, video_mb=0.3, dump_mb=0.1)
    return tmp_path / "data"


@contextlib.contextmanager
def small_tmpfs(path: Path, megabytes: int):
    """A real small file system (tmpfs) at ``path``; skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a {megabytes} MB tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def tmpfs_factory():
    return small_tmpfs


def random_file(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path
