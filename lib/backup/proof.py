"""Every restore proven: a sampled restore after each backup, and whole-archive restores checked against borg.

After a backup, a sample of the new archive's files (and every dump of the
run) is extracted into a temporary folder and compared byte for byte (SHA-256)
with the staging copy it was made from; restored dumps are also read through
with their own format's reader. ``restore_archive`` extracts a whole archive
beside its destination, compares every file with the checksums borg computes
from the archive, and only then renames it into place.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from labpipe.backup.borg import Borg
from labpipe.backup.dumps import verify_dump
from labpipe.backup.errors import ArchiveMismatch, DiskFull
from labpipe.errors import ConflictError
from labpipe.files import atomic_path, sha256_file


@dataclass
class ProofResult:
    """What the restore proof extracted and whether it matched."""

    archive: str
    checked: list[str] = field(default_factory=list)
    bytes: int = 0
    mismatches: list[dict] = field(default_factory=list)  # {"path", "reason"}
    dumps: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.mismatches


def choose_sample(entries: list[dict], count: int, *, max_bytes: int, must: list[str], seed: int | str) -> list[dict]:
    """``must`` (when in the archive) plus up to ``count`` random regular files within ``max_bytes``."""
    regular = {e["path"]: e for e in entries if e.get("type") == "-"}
    chosen = [regular[p] for p in must if p in regular]
    rest = [e for p, e in regular.items() if p not in set(must)]
    random.Random(str(seed)).shuffle(rest)
    budget = max_bytes
    for entry in rest:
        if len(chosen) - len(must) >= count:
            break
        if entry.get("size", 0) <= budget:
            chosen.append(entry)
            budget -= entry.get("size", 0)
    return chosen


def prove_restore(
    borg: Borg,
    archive: str,
    staging_root: Path,
    *,
    sample: int,
    max_bytes: int,
    dumps: list[str],
    workdir: Path,
) -> ProofResult:
    """Extract a sample plus ``dumps`` (archive paths) from ``archive`` and compare with the staging copy."""
    started = time.monotonic()
    result = ProofResult(archive)
    entries = borg.files(archive)
    listed = {e["path"] for e in entries}
    for path in dumps:
        if path not in listed:
            result.mismatches.append({"path": path, "reason": "dump is missing from the archive"})
    chosen = choose_sample(entries, sample, max_bytes=max_bytes, must=dumps, seed=archive)
    if not chosen:
        result.seconds = time.monotonic() - started
        return result
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="proof-", dir=workdir) as tmp:
        borg.extract(archive, Path(tmp), [e["path"] for e in chosen])
        for entry in chosen:
            rel = entry["path"]
            restored, original = Path(tmp) / rel, Path(staging_root) / rel
            reason = _compare(restored, original, entry.get("size", 0))
            if reason is None and rel in dumps:
                try:
                    verify_dump(restored)
                    result.dumps.append(rel)
                except Exception as exc:  # a dump that its own reader rejects is not a restorable dump
                    reason = f"restored dump does not read back: {exc}"
            if reason:
                result.mismatches.append({"path": rel, "reason": reason})
            result.checked.append(rel)
            result.bytes += entry.get("size", 0)
    result.seconds = time.monotonic() - started
    return result


def _compare(restored: Path, original: Path, size: int) -> str | None:
    if not restored.is_file():
        return "not restored"
    if restored.stat().st_size != size:
        return f"restored size {restored.stat().st_size} != archived size {size}"
    if not original.is_file():
        return "staging copy is gone (changed after the backup?)"
    if sha256_file(restored) != sha256_file(original):
        return "content differs from the staging copy (SHA-256)"
    return None


@dataclass
class RestoreResult:
    archive: str
    destination: Path
    files: int
    bytes: int
    verified: bool
    seconds: float


def restore_archive(
    borg: Borg,
    archive: str,
    destination: Path,
    *,
    verify: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> RestoreResult:
    """Restore a whole archive into ``destination`` (new or empty), proven against borg's own checksums."""
    started = time.monotonic()
    destination = Path(destination).absolute()
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise ConflictError(
            destination,
            "restore destination exists and is not an empty folder",
            "choose a new folder; a restore never overwrites files",
        )
    size = int(borg.archive_info(archive)["stats"]["original_size"])
    probe = destination if destination.exists() else destination.parent
    probe.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(probe).free
    if free < size:
        raise DiskFull(
            destination,
            f"archive {archive} needs {size / 1e9:.2f} GB, {free / 1e9:.2f} GB free",
            "restore to a larger disk",
        )
    files = 0
    with atomic_path(destination) as staged:  # a failed or unproven restore leaves nothing at destination
        borg.extract(archive, staged, progress=progress)
        if verify:
            mismatches = []
            for entry in borg.files(archive, checksums=True):
                if entry.get("type") != "-":
                    continue
                files += 1
                restored = staged / entry["path"]
                if not restored.is_file() or sha256_file(restored) != entry["sha256"]:
                    mismatches.append(entry["path"])
            if mismatches:
                raise ArchiveMismatch(
                    archive,
                    f"{len(mismatches)} restored files differ from the archive, e.g. {mismatches[:3]}",
                    "run `labpipe backup check --verify-data`",
                )
        else:
            files = sum(1 for p in staged.rglob("*") if p.is_file())
    return RestoreResult(archive, destination, files, size, verify, time.monotonic() - started)
