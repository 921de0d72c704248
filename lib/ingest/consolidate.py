"""Consolidation: raw files from the setups' staging folders into their session/scan folder.

Staging layout: ``<staging>/<setup>/<username>/<session folder>/<scan folder>/<files>``.
Each file is checksummed, moved atomically (never over a different file of the
same name) and recorded with its setup in the scan's ``.origin.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.errors import ConflictError
from labpipe.files import atomic_write_text, move_file_safely
from labpipe.ingest.naming import FolderNameError, parse_scan_name, parse_session_name
from labpipe.ingest.schema import SETUPS
from labpipe.ingest.share import ORIGIN_FILE, Rejection


@dataclass
class ConsolidationReport:
    moved: list[str] = field(default_factory=list)  # share-relative paths
    problems: list[Rejection] = field(default_factory=list)


def _record_origin(scan_dir: Path, setup: str, checksums: dict[str, str]) -> None:
    origin_path = scan_dir / ORIGIN_FILE
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


def consolidate(staging: Path, share: Path) -> ConsolidationReport:
    """Move every staged file into the share; a file that cannot move stays in staging, reported."""
    staging, share = Path(staging), Path(share)
    report = ConsolidationReport()
    if not staging.exists():
        return report
    for setup_dir in sorted(p for p in staging.iterdir() if p.is_dir()):
        if setup_dir.name not in SETUPS:
            report.problems.append(Rejection(str(setup_dir), f"unknown setup; expected one of {', '.join(SETUPS)}"))
            continue
        by_scan: dict[Path, dict[str, str]] = {}
        for dirpath, dirnames, filenames in os.walk(setup_dir):
            dirnames.sort()
            for name in sorted(filenames):
                source = Path(dirpath) / name
                rel = source.relative_to(setup_dir)
                if len(rel.parts) < 4:
                    report.problems.append(
                        Rejection(
                            str(source), "expected <username>/<session folder>/<scan folder>/<file> under the setup"
                        )
                    )
                    continue
                reason = _check_names(rel.parts)
                if reason:
                    report.problems.append(Rejection(str(source), reason))
                    continue
                scan_dir = share.joinpath(*rel.parts[:3])
                try:
                    digest = move_file_safely(source, share / rel)
                except ConflictError as exc:
                    report.problems.append(Rejection(str(source), str(exc)))
                    continue
                by_scan.setdefault(scan_dir, {})[Path(*rel.parts[3:]).as_posix()] = digest
                report.moved.append(rel.as_posix())
        for scan_dir, checksums in by_scan.items():
            _record_origin(scan_dir, setup_dir.name, checksums)
        _remove_empty_dirs(setup_dir)
    return report


def _remove_empty_dirs(top: Path) -> None:
    for dirpath, _, _ in sorted(os.walk(top), key=lambda item: -len(item[0])):
        if Path(dirpath) != top:
            with contextlib.suppress(OSError):  # not empty: a file is still there
                os.rmdir(dirpath)
