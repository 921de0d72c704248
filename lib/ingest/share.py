"""Walk a lab share and sort every folder into accepted sessions/scans or rejections.

A rejected folder never stops the others: each rejection carries the path and
the reason (which token is wrong and what was expected).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labpipe.ingest.naming import FolderNameError, parse_scan_name, parse_session_name

ORIGIN_FILE = ".origin.json"  # written by consolidation: setup and checksums of the files it moved
USERNAME = re.compile(r"[a-z][a-z0-9._-]*")
MODALITY_BY_SUFFIX = {
    ".tif": "imaging",
    ".tiff": "imaging",
    ".mp4": "video",
    ".avi": "video",
    ".tak": "mocap",
    ".json": "aux",
}


def modality_of(path: Path) -> str:
    """imaging, video, mocap, aux or other; a .csv is motion capture when it is a Motive export."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, "rb") as handle:
            return "mocap" if handle.read(14) == b"Format Version" else "aux"
    return MODALITY_BY_SUFFIX.get(suffix, "other")


@dataclass
class RawFileRecord:
    name: str  # path relative to the scan folder
    size: int
    modality: str
    checksum: str | None = None  # known from consolidation; computed at insert otherwise


@dataclass
class ScanRecord:
    scan_id: str
    folder: str
    setup: str | None
    files: list[RawFileRecord] = field(default_factory=list)


@dataclass
class SessionRecord:
    session_id: str
    username: str
    initials: str
    animal_id: str
    session_date: dt.date
    folder: str  # relative to the share root
    scans: list[ScanRecord] = field(default_factory=list)

    def as_json(self) -> dict:
        data = asdict(self)
        data["session_date"] = self.session_date.isoformat()
        return data


@dataclass
class Rejection:
    path: str
    reason: str


@dataclass
class ShareScan:
    root: str
    sessions: list[SessionRecord] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def _visible_dirs(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted((e for e in entries if not e.name.startswith(".") and e.is_dir()), key=lambda e: e.name)


MAX_FILE_NAME = 255  # RawFile.file_name is varchar(255)


def _scan_files(scan_dir: Path, rejected: list[Rejection], scan_rel: str) -> tuple[list[RawFileRecord], str | None]:
    origin_path = scan_dir / ORIGIN_FILE
    origin = json.loads(origin_path.read_text()) if origin_path.exists() else {}
    known = origin.get("files", {})
    files = []
    for dirpath, dirnames, filenames in os.walk(scan_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(scan_dir).as_posix()
            if len(rel) > MAX_FILE_NAME:
                rejected.append(
                    Rejection(f"{scan_rel}/{rel}", f"path inside the scan longer than {MAX_FILE_NAME} characters")
                )
                continue
            files.append(RawFileRecord(rel, path.stat().st_size, modality_of(path), known.get(rel)))
    return files, origin.get("setup")


def scan_share(root: Path, *, today: dt.date | None = None) -> ShareScan:
    """Sort every folder under ``root`` (``<root>/<username>/<session>/<scan>``)."""
    root = Path(root)
    result = ShareScan(root=str(root))
    seen: dict[str, str] = {}
    for user_entry in _visible_dirs(root):
        if not USERNAME.fullmatch(user_entry.name):
            result.rejected.append(
                Rejection(user_entry.name, f"username folder {user_entry.name!r}: expected lowercase letters/digits")
            )
            continue
        for sess_entry in _visible_dirs(Path(user_entry.path)):
            rel = f"{user_entry.name}/{sess_entry.name}"
            try:
                name = parse_session_name(sess_entry.name, today=today)
            except FolderNameError as exc:
                result.rejected.append(Rejection(rel, str(exc)))
                continue
            if name.session_id in seen:
                result.rejected.append(
                    Rejection(rel, f"session id {name.session_id} is already used by {seen[name.session_id]}")
                )
                continue
            session = SessionRecord(
                name.session_id, user_entry.name, name.initials, name.animal_id, name.session_date, rel
            )
            for scan_entry in _visible_dirs(Path(sess_entry.path)):
                scan_rel = f"{rel}/{scan_entry.name}"
                try:
                    scan_id = parse_scan_name(scan_entry.name)
                except FolderNameError as exc:
                    result.rejected.append(Rejection(scan_rel, str(exc)))
                    continue
                files, setup = _scan_files(Path(scan_entry.path), result.rejected, scan_rel)
                session.scans.append(ScanRecord(scan_id, scan_rel, setup, files))
            if not session.scans:
                result.rejected.append(Rejection(rel, "contains no scan<SCANID> folder"))
                continue
            seen[name.session_id] = rel
            result.sessions.append(session)
    return result
