"""Consolidation: staged files of two setups' scan folders moved into the share, killed mid-move.

Staging is on tmpfs (``/dev/shm``) and the share on disk, so every move is a copy (a big file takes a while),
a verification, an fsync and an unlink: the path where a partial copy or an early unlink would lose data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from fault_scenarios import Context, Outcome, Scenario, partial_names, sha256

SHM = Path("/dev/shm")
BIG_MB = 192
FILES = {  # staging path (setup/user/session/scan/...) -> size in bytes
    "mini2p1/alice/AB_M1_2026-01-05_sessAAAA1111/scanAAAA1111/stack.tif": BIG_MB << 20,
    "mini2p1/alice/AB_M1_2026-01-05_sessAAAA1111/scanAAAA1111/frames/0001.tif": 3 << 20,
    "mini2p1/alice/AB_M1_2026-01-05_sessAAAA1111/scanAAAA1111/meta.json": 2_000,
    "behavior1/bob/BC_M2_2026-01-06_sessBBBB2222/scanBBBB2222/cam.mp4": 64 << 20,
    "behavior1/bob/BC_M2_2026-01-06_sessBBBB2222/scanBBBB2222/events.csv": 40_000,
}


def _staging(root: Path) -> Path:
    """This trial's staging folder on tmpfs (another file system than the share under ``root``)."""
    base = SHM if SHM.is_dir() else root
    return base / f"labpipe-faults-consolidation-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}"


def _sweep_old_staging() -> None:
    """Remove tmpfs staging folders of trials whose folder is gone (the driver deletes trial folders)."""
    for folder in SHM.glob("labpipe-faults-consolidation-*"):
        owner = folder / ".root"
        if not owner.exists() or not Path(owner.read_text()).exists():
            shutil.rmtree(folder, ignore_errors=True)


def _write(path: Path, size: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = hashlib.sha256(str(seed).encode()).digest() * (1 << 15)  # 1 MiB of seeded bytes
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            out.write(chunk)
            left -= len(chunk)
            block = hashlib.sha256(block[:64]).digest() + block[32:]  # not one repeated block
    os.utime(path, (1_700_000_000, 1_700_000_000))


class Consolidation(Scenario):
    name = "consolidation"
    description = f"move {len(FILES)} staged files (one of {BIG_MB} MiB) of two setups from tmpfs into the share"

    def env(self, ctx: Context, root: Path) -> dict:
        return {}

    def prepare(self, ctx: Context, root: Path) -> None:
        _sweep_old_staging()
        staging = _staging(root)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        (staging / ".root").write_text(str(root))
        checksums = {}
        for i, (rel, size) in enumerate(sorted(FILES.items())):
            _write(staging / rel, size, i)
            checksums[rel] = sha256(staging / rel)
        (root / "input.json").write_text(json.dumps(checksums, indent=1))

    def run(self, ctx: Context, root: Path) -> None:
        from labpipe.ingest.consolidate import consolidate

        report = consolidate(_staging(root), root / "share", min_age_s=0)
        if report.rejected or report.waiting:
            raise SystemExit(f"not consolidated: {report.as_json()}")

    def check(self, ctx: Context, root: Path, finished: bool = True) -> Outcome:
        staging, share = _staging(root), root / "share"
        expected = json.loads((root / "input.json").read_text())
        lost, half, in_share = [], [], 0
        for rel, digest in expected.items():
            source, moved = staging / rel, share.joinpath(*Path(rel).parts[1:])
            staged_ok = source.is_file() and sha256(source) == digest
            moved_ok = moved.is_file() and sha256(moved) == digest
            if moved.exists() and not moved_ok:
                half.append(f"{moved.relative_to(share)} holds other bytes than the source")
            if not staged_ok and not moved_ok:
                lost.append(rel)
            in_share += moved_ok and not source.exists()
            origin = share.joinpath(*Path(rel).parts[1:5]) / ".origin.json"
            if origin.exists():  # a recorded checksum must be the file's, and the setup the one it came from
                record = json.loads(origin.read_text())
                name = Path(*Path(rel).parts[5:]).as_posix()
                if record["files"].get(name, digest) != digest or record.get("setup") != rel.split("/")[0]:
                    half.append(f"{origin.relative_to(share)} records a wrong checksum or setup for {name}")
        if finished:  # after the rerun: the leftovers of the killed run are gone
            half += partial_names(share)
        complete = in_share == len(expected)
        if finished and complete:
            complete = not any(p.is_file() for p in staging.rglob("*") if p.name != ".root")
        if finished and not ctx.keep:  # tmpfs is memory: the driver removes the trial folder, this goes too
            shutil.rmtree(staging, ignore_errors=True)
        return Outcome(complete=complete or not finished, lost_files=lost, half_written=half)


SCENARIO = Consolidation()
