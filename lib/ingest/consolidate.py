"""Consolidation: raw files from the setups' staging folders into their session/scan folder.

Staging layout: ``<staging>/<setup>/<username>/<session folder>/<scan folder>/<files>``.
Each file is checksummed, moved atomically (never over a different file of the
same name) and recorded with its setup in the scan's ``.origin.json``.

Only quiet regular files move: a file moves once neither its content nor its metadata
has changed for ``min_age_s`` (its mtime and its ctime, which no tool can set back, are
both that old) and no local process holds it open for writing. Anything else in
staging that is not a folder (symbolic links, FIFOs, sockets, devices) is never opened,
only reported as rejected. A folder is removed only when empty and as quiet as a file.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.errors import ConflictError, InvalidInput
from labpipe.files import CHUNK, atomic_write_text, move_file_safely
from labpipe.ingest.naming import FolderNameError, parse_scan_name, parse_session_name
from labpipe.ingest.schema import SETUPS
from labpipe.ingest.share import ORIGIN_FILE

DEFAULT_MIN_AGE_S = 120.0  # acquisition programs pause between frames; two minutes of silence means done

_KINDS = {
    stat.S_IFLNK: "a symbolic link (never followed: it could pull any readable file into the share)",
    stat.S_IFIFO: "a FIFO (never opened: reading it would block ingest)",
    stat.S_IFSOCK: "a socket (never opened)",
    stat.S_IFCHR: "a character device (never opened)",
    stat.S_IFBLK: "a block device (never opened)",
}


@dataclass
class ConsolidationItem:
    """One staged path and what happened to it: ``path`` is share-relative when moved, else the staging path."""

    path: str
    reason: str
    age_s: float | None = None  # seconds since the file last changed (waiting files)

    def as_json(self) -> dict:
        item = {"path": self.path, "reason": self.reason}
        if self.age_s is not None:
            item["age_s"] = round(self.age_s, 1)
        return item


@dataclass
class ConsolidationReport:
    moved: list[ConsolidationItem] = field(default_factory=list)
    waiting: list[ConsolidationItem] = field(default_factory=list)  # still being written: moves on a later run
    rejected: list[ConsolidationItem] = field(default_factory=list)  # stays in staging until someone acts

    @property
    def problems(self) -> list[ConsolidationItem]:
        return self.rejected

    def as_json(self) -> dict:
        return {name: [item.as_json() for item in getattr(self, name)] for name in ("moved", "waiting", "rejected")}


class _Changed(Exception):
    """The file changed between listing and moving: it waits for the next run."""


def _remove_stale_parts(final: Path, min_age_s: float) -> None:
    """Remove what a killed earlier run left of ``final`` (``atomic_path``'s ``.<name>.*.part`` folders)."""
    now = time.time()
    for part in final.parent.glob(f".{glob.escape(final.name)}.*.part"):
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.lstat(part).st_mode) and _age_s(os.lstat(part), now) >= min_age_s:
                shutil.rmtree(part)


def _record_origin(scan_dir: Path, setup: str, checksums: dict[str, str], min_age_s: float = 0.0) -> None:
    origin_path = scan_dir / ORIGIN_FILE
    _remove_stale_parts(origin_path, min_age_s)
    origin = json.loads(origin_path.read_text()) if origin_path.exists() else {"files": {}}
    if origin.get("setup") not in (None, setup):
        origin.setdefault("other_setups", [])
        if setup not in origin["other_setups"]:
            origin["other_setups"].append(setup)
    else:
        origin["setup"] = setup
    origin["files"].update(checksums)
    atomic_write_text(origin_path, json.dumps(origin, indent=1, sort_keys=True))


def _check_names(rel_parts: tuple[str, ...]) -> str | None:
    username, session, scan = rel_parts[:3]
    try:
        parse_session_name(session)
        parse_scan_name(scan)
    except FolderNameError as exc:
        return str(exc)
    return None


def _age_s(st: os.stat_result, now: float) -> float:
    """Seconds since the content (mtime) or the metadata (ctime, which cannot be set back) last changed."""
    return now - max(st.st_mtime, st.st_ctime)


def _special_kind(st: os.stat_result) -> str | None:
    kind = stat.S_IFMT(st.st_mode)
    return None if kind in (stat.S_IFREG, stat.S_IFDIR) else _KINDS.get(kind, "not a regular file (never opened)")


def open_for_writing(inodes: set[tuple[int, int]]) -> dict[tuple[int, int], list[int]]:
    """{(device, inode): pids} of the given files that a local process holds open for writing.

    Reads ``/proc/<pid>/fd`` and the access mode in ``/proc/<pid>/fdinfo``; processes this
    account cannot inspect (other users' when not root) are not seen, which the quiet window covers.
    """
    held: dict[tuple[int, int], list[int]] = {}
    if not inodes:
        return held
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = os.listdir(proc / "fd")
        except OSError:
            continue  # gone, or not ours to see
        for fd in fds:
            try:
                st = os.stat(proc / "fd" / fd)  # the open file itself, never opened here
                if (st.st_dev, st.st_ino) not in inodes:
                    continue
                info = (proc / "fdinfo" / fd).read_text()
            except OSError:
                continue
            flags = next((int(line.split()[1], 8) for line in info.splitlines() if line.startswith("flags:")), 0)
            if flags & os.O_ACCMODE != os.O_RDONLY:
                held.setdefault((st.st_dev, st.st_ino), []).append(int(proc.name))
    return held


def _describe_writers(pids: list[int]) -> str:
    names = []
    for pid in sorted(set(pids)):
        with contextlib.suppress(OSError):
            names.append(f"pid {pid} ({Path(f'/proc/{pid}/comm').read_text().strip()})")
    return ", ".join(names) or f"pid {pids[0]}"


def _checksum_quiet_file(source: Path, listed: os.stat_result) -> str:
    """SHA-256 of the regular file listed, read through a descriptor that cannot follow a link or block."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(source, flags)
    except OSError as exc:
        raise _Changed(f"could not be opened safely ({exc.strerror}); replaced since it was listed?") from exc
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode) or (before.st_dev, before.st_ino) != (listed.st_dev, listed.st_ino):
            raise _Changed("was replaced since it was listed")
        digest = hashlib.sha256()
        while block := os.read(fd, CHUNK):
            digest.update(block)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    state = (after.st_size, after.st_mtime_ns, after.st_ctime_ns)
    if state != (listed.st_size, listed.st_mtime_ns, listed.st_ctime_ns):
        raise _Changed("changed while it was being checksummed")
    return digest.hexdigest()


@dataclass
class _Candidate:
    source: Path
    rel: Path  # relative to the setup folder
    st: os.stat_result


def _list_setup(setup_dir: Path, report: ConsolidationReport) -> list[_Candidate]:
    """Regular files under a setup folder; every other kind of entry is rejected without being opened."""
    candidates = []
    for dirpath, dirnames, filenames in os.walk(setup_dir):  # never descends into linked folders
        dirnames.sort()
        for name in list(dirnames):
            folder = Path(dirpath) / name
            kind = _special_kind(os.lstat(folder))
            if kind:
                report.rejected.append(ConsolidationItem(str(folder), f"{kind}; expected a folder or a file"))
                dirnames.remove(name)
        for name in sorted(filenames):
            source = Path(dirpath) / name
            try:
                st = os.lstat(source)
            except FileNotFoundError:
                continue  # moved or deleted meanwhile
            kind = _special_kind(st)
            if kind:
                report.rejected.append(ConsolidationItem(str(source), f"{kind}; only regular files are consolidated"))
                continue
            rel = source.relative_to(setup_dir)
            if len(rel.parts) < 4:
                report.rejected.append(
                    ConsolidationItem(
                        str(source), "expected <username>/<session folder>/<scan folder>/<file> under the setup"
                    )
                )
                continue
            reason = _check_names(rel.parts)
            if reason:
                report.rejected.append(ConsolidationItem(str(source), reason))
                continue
            candidates.append(_Candidate(source, rel, st))
    return candidates


def _setup_folders(staging: Path, report: ConsolidationReport) -> list[Path]:
    folders = []
    for entry in sorted(staging.iterdir()):
        st = os.lstat(entry)
        kind = _special_kind(st)
        if kind:
            report.rejected.append(ConsolidationItem(str(entry), f"{kind}; expected a setup folder"))
        elif not stat.S_ISDIR(st.st_mode):
            continue  # a stray regular file at the top: not a setup's, left alone
        elif entry.name not in SETUPS:
            report.rejected.append(ConsolidationItem(str(entry), f"unknown setup; expected one of {', '.join(SETUPS)}"))
        else:
            folders.append(entry)
    return folders


def consolidate(staging: Path, share: Path, *, min_age_s: float = DEFAULT_MIN_AGE_S) -> ConsolidationReport:
    """Move every quiet staged file into the share; the rest stays in staging, reported as waiting or rejected."""
    staging, share = Path(staging), Path(share)
    report = ConsolidationReport()
    if not staging.exists():
        return report
    for setup_dir in _setup_folders(staging, report):
        candidates = _list_setup(setup_dir, report)
        for scan_dir in setup_dir.glob("*/*/*"):  # an origin record a killed run was writing
            _remove_stale_parts(share / scan_dir.relative_to(setup_dir) / ORIGIN_FILE, min_age_s)
        writers = open_for_writing({(c.st.st_dev, c.st.st_ino) for c in candidates})
        now = time.time()
        recorded: set[Path] = set()
        for c in candidates:
            pids = writers.get((c.st.st_dev, c.st.st_ino))
            age = _age_s(c.st, now)
            if pids:
                report.waiting.append(
                    ConsolidationItem(str(c.source), f"open for writing by {_describe_writers(pids)}", age)
                )
                continue
            if age < min_age_s:
                report.waiting.append(
                    ConsolidationItem(
                        str(c.source), f"changed {age:.0f} s ago; moves once unchanged for {min_age_s:.0f} s", age
                    )
                )
                continue
            scan_dir = share.joinpath(*c.rel.parts[:3])
            try:
                digest = _checksum_quiet_file(c.source, c.st)
                if scan_dir not in recorded:  # the setup is on disk before any of its files is in the share
                    _record_origin(scan_dir, setup_dir.name, {}, min_age_s)
                    recorded.add(scan_dir)
                _remove_stale_parts(share / c.rel, min_age_s)
                digest = move_file_safely(c.source, share / c.rel, checksum=digest)
            except _Changed as exc:
                report.waiting.append(ConsolidationItem(str(c.source), str(exc), 0.0))
                continue
            except (ConflictError, InvalidInput) as exc:
                report.rejected.append(ConsolidationItem(str(c.source), str(exc)))
                continue
            except OSError as exc:  # one file's trouble never stops the batch; it stays in staging
                report.rejected.append(ConsolidationItem(str(c.source), f"could not be moved: {exc}"))
                continue
            # recorded right after the move: a crash in between leaves the checksum unrecorded (ingest then
            # computes it from the share), never a wrong one
            _record_origin(scan_dir, setup_dir.name, {Path(*c.rel.parts[3:]).as_posix(): digest}, min_age_s)
            report.moved.append(ConsolidationItem(c.rel.as_posix(), f"moved, sha256 {digest}"))
        _remove_empty_dirs(setup_dir, min_age_s)
    return report


def _remove_empty_dirs(top: Path, min_age_s: float) -> None:
    """Remove empty folders under ``top`` that have been quiet for the window (a setup may have just made one)."""
    now = time.time()
    for dirpath, _, _ in sorted(os.walk(top), key=lambda item: -len(item[0])):
        folder = Path(dirpath)
        if folder == top:
            continue
        with contextlib.suppress(OSError):  # gone, or not empty: a file is still there
            if _age_s(os.lstat(folder), now) >= min_age_s:
                os.rmdir(folder)
