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


def _folder(path, tag: str, n: int = 200) -> dict:
    path.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (path / f"f{i:04d}").write_text(f"{tag}-{i}")
    return {p.name: p.read_text() for p in path.iterdir()}


def test_replacing_a_folder_never_deletes_the_one_in_place_before_the_new_one_is_there(tmp_path, monkeypatch):
    """A kill while the old folder was being deleted (before the rename) left a partly deleted product."""
    import os
    import shutil

    from labpipe import files

    final = tmp_path / "product"
    _folder(final, "old")
    deleted_while_final = []
    real_rmtree = shutil.rmtree

    def watching_rmtree(path, *args, **kwargs):
        if os.path.realpath(path) == os.path.realpath(final):
            deleted_while_final.append(sorted(p.read_text() for p in final.iterdir())[:1])
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(files.shutil, "rmtree", watching_rmtree)
    with files.atomic_path(final) as work:
        new = _folder(work, "new")
    assert deleted_while_final == []  # the product in place was never what got deleted
    assert {p.name: p.read_text() for p in final.iterdir()} == new
    assert [p.name for p in tmp_path.iterdir()] == ["product"]  # the old one and the staging are gone


def test_a_folder_replacement_killed_anywhere_leaves_the_old_or_the_new_folder_whole(tmp_path):
    import random
    import signal
    import subprocess
    import sys
    import time

    final = tmp_path / "product"
    old = _folder(final, "old", 2000)
    script = (
        "import sys; from pathlib import Path; from labpipe.files import atomic_path\n"
        "with atomic_path(Path(sys.argv[1])) as work:\n"
        "    work.mkdir()\n"
        "    [(work / f'f{i:04d}').write_text(f'new-{i}') for i in range(2000)]\n"
    )
    rng = random.Random(7)
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", script, str(final)])
        time.sleep(rng.uniform(0.2, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = {p.name: p.read_text() for p in final.iterdir()}
        assert now == old or now == {k: v.replace("old", "new") for k, v in old.items()}, len(now)
        if now != old:
            old = now
