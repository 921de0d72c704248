"""rsync pulls of the sources (``labpipe.backup.pull``), with real rsync."""

from __future__ import annotations

from pathlib import Path

import pytest
from labpipe.backup.errors import SourceUnavailable
from labpipe.backup.settings import BackupSource


def test_pull_mirrors_the_source_and_reports_changes(lab_data, tmp_path):
    from labpipe.backup.pull import pull_source
    from labpipe.backup.simulate import tree_checksums

    source = BackupSource(name="share", path=str(lab_data / "share"), excludes=["*.mp4"])
    seen = []
    first = pull_source(source, tmp_path / "staging", progress=lambda done, total: seen.append((done, total)))
    expected = {k: v for k, v in tree_checksums(lab_data / "share").items() if not k.endswith(".mp4")}
    assert tree_checksums(tmp_path / "staging" / "share") == expected
    assert first.files == len(expected) and first.transferred_bytes == first.bytes > 0
    assert seen and seen[-1][0] == first.bytes
    again = pull_source(source, tmp_path / "staging")
    assert again.transferred_bytes == 0 and again.bytes == first.bytes
    gone = next((lab_data / "share").rglob("*.csv"))
    gone.unlink()  # the staging copy is a mirror: deletions follow
    pull_source(source, tmp_path / "staging")
    assert not (tmp_path / "staging" / "share" / gone.relative_to(lab_data / "share")).exists()


def test_missing_or_unreachable_source_is_a_clear_error(tmp_path):
    from labpipe.backup.pull import pull_source

    with pytest.raises(SourceUnavailable, match="'gone'.*does not exist"):
        pull_source(BackupSource(name="gone", path=str(tmp_path / "nope")), tmp_path / "staging")
    # no ssh server listens on this machine's loopback: rsync over ssh cannot connect
    with pytest.raises(SourceUnavailable, match="cannot reach it"):
        pull_source(BackupSource(name="main", path="backup@127.0.0.1:/datajoint-data"), tmp_path / "staging")


def test_a_remote_source_goes_through_the_hosts_ssh_config_in_batch_mode(monkeypatch):
    """The backup host's host.env names its ssh configuration (the pull key, main's host key): rsync uses it."""
    from labpipe.backup.pull import rsync_command

    remote = BackupSource(name="share", path="main:share")
    monkeypatch.delenv("LABPIPE_SSH_CONFIG", raising=False)
    shell = rsync_command(remote, Path("/staging"))
    assert shell[shell.index("-e") + 1].startswith("ssh -o BatchMode=yes")
    monkeypatch.setenv("LABPIPE_SSH_CONFIG", "/etc/labpipe/ssh/config")
    shell = rsync_command(remote, Path("/staging"))
    assert shell[shell.index("-e") + 1].startswith("ssh -F /etc/labpipe/ssh/config -o BatchMode=yes")
    assert "-e" not in rsync_command(BackupSource(name="local", path="/srv/share"), Path("/staging"))
