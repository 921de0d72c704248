"""labpipe.files: the one checked way from a user's name to a path component."""

from __future__ import annotations

from pathlib import Path

import pytest
from labpipe.errors import InvalidInput
from labpipe.files import path_component

BAD = {
    "": "empty",
    ".": "names a folder",
    "..": "names a folder",
    "../x": "separator",
    "a/b": "separator",
    "a\\b": "separator",
    "/abs": "separator",
    "nul\x00": "control",
    "new\nline": "control",
    "tab\tx": "control",
    "esc\x1b[31m": "control",
    " lead": "blanks",
    "trail ": "blanks",
    "x" * 256: "bytes long",
    "é" * 128: "bytes long",  # 256 bytes in UTF-8
}


@pytest.mark.parametrize("name", list(BAD), ids=[repr(n[:12]) for n in BAD])
def test_names_that_are_not_one_path_component_are_refused_with_the_reason(name):
    with pytest.raises(InvalidInput, match=BAD[name]) as caught:
        path_component(name, what="run name")
    assert "run name" in str(caught.value)


HARMLESS = ["tomo-1", "a.b_c", "x" * 255, "é" * 127, "x$(touch CANARY)", "[x]{y}*.bin", ".hidden"]


@pytest.mark.parametrize("name", HARMLESS)
def test_plain_and_odd_but_harmless_names_pass_unchanged(name):
    assert path_component(name) == name


def _record_syscalls(monkeypatch) -> list[tuple[str, str]]:
    """(call, path) for every fsync and rename made through ``os`` (the order matters for durability)."""
    import os

    calls: list[tuple[str, str]] = []
    real_fsync, real_replace, real_unlink = os.fsync, os.replace, os.unlink
    paths: dict[int, str] = {}
    real_open = os.open

    def spy_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        paths[fd] = str(path)
        return fd

    def spy_fsync(fd):
        calls.append(("fsync", paths.get(fd, f"fd {fd}")))
        return real_fsync(fd)

    def spy_replace(src, dst, *args, **kwargs):
        calls.append(("replace", str(dst)))
        return real_replace(src, dst, *args, **kwargs)

    def spy_unlink(path, *args, **kwargs):
        calls.append(("unlink", str(path)))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(os, "unlink", spy_unlink)
    return calls


def test_atomic_path_makes_a_file_the_caller_did_not_sync_durable_before_the_rename(tmp_path, monkeypatch):
    from labpipe.files import atomic_path

    final = tmp_path / "out" / "dump.sql.gz"
    calls = _record_syscalls(monkeypatch)
    with atomic_path(final) as staged:
        staged.write_bytes(b"x" * 1000)  # as pg_dump's output or a registry upload arrives: no fsync of its own
    rename = calls.index(("replace", str(final)))
    synced_before = [path for call, path in calls[:rename] if call == "fsync"]
    assert any(path.endswith("dump.sql.gz") for path in synced_before), calls
    assert ("fsync", str(final.parent)) in calls[rename:], calls
    assert final.read_bytes() == b"x" * 1000


def test_atomic_path_syncs_every_file_of_a_staged_folder_before_the_rename(tmp_path, monkeypatch):
    from labpipe.files import atomic_path

    final = tmp_path / "run"
    calls = _record_syscalls(monkeypatch)
    with atomic_path(final) as staged:
        (staged / "sub").mkdir(parents=True)
        (staged / "a.bin").write_bytes(b"a")
        (staged / "sub" / "b.bin").write_bytes(b"b")
    rename = calls.index(("replace", str(final)))
    synced = {Path(path).name for call, path in calls[:rename] if call == "fsync"}
    assert {"a.bin", "b.bin", "sub"} <= synced, calls


def test_a_moved_file_is_on_disk_under_its_new_name_before_the_source_is_removed(tmp_path, monkeypatch):
    from labpipe.files import move_file_safely

    source, dest = tmp_path / "staging" / "f.tif", tmp_path / "share" / "f.tif"
    source.parent.mkdir()
    source.write_bytes(b"frames")
    calls = _record_syscalls(monkeypatch)
    move_file_safely(source, dest)
    gone = calls.index(("unlink", str(source)))
    assert ("fsync", str(dest.parent)) in calls[:gone], calls
    assert dest.read_bytes() == b"frames" and not source.exists()
