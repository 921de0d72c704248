"""Retention (archive-delete), killed anywhere in the plan's application; the rerun must finish it.

Six old entries in the radio tree (files and a folder) under an ``archive-delete`` policy; the step is what the
retention flow's task runs: ``apply_retention`` with a real rclone remote (a local path, throttled so the run
takes seconds) and the ledger in the campaign's PostgreSQL. The kill is a SIGKILL of the worker's process
group; rclone gets SIGTERM through its parent-death signal.

check: every input file is either still in place and intact, or gone locally with a byte-identical copy off-site
AND a ledger row that recorded it verified before the delete (else: lost); no rclone partial file or staged
name in the archive (half-written); after the rerun every entry is archived and deleted.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from fault_scenarios import (
    Context,
    Outcome,
    Scenario,
    load_checksums,
    partial_names,
    save_checksums,
    schema_prefix,
    sha256,
    tree_checksums,
)

REMOTE_FOLDER = "retention"


def _roots(root: Path):
    from labpipe.layout import Layout

    return Layout.default(root / "home").ensure()


def _policies():
    from labpipe.backup.settings import RetentionPolicies, RetentionPolicy

    return RetentionPolicies(
        policies=[
            RetentionPolicy(root="radio", folder="incoming", pattern="*.hdf5", keep_days=7, action="archive-delete"),
            RetentionPolicy(
                root="radio", folder="ms/science", pattern="????-??-??", keep_days=7, action="archive-delete"
            ),
        ]
    )


def _remote(root: Path):
    from labpipe.backup.settings import RcloneRemote

    return RcloneRemote(type="local", path=str(root / "tape"), bwlimit="3M", transfers=1)


def _tables(ctx: Context, root: Path):
    from labpipe.backup.schema import tables
    from labpipe.db.connect import LabDatabase
    from labpipe.db.target import DatabaseTarget

    return tables(LabDatabase(DatabaseTarget.from_url(ctx.database_url), root / "blobs", prefix=schema_prefix(root)))


class Retention(Scenario):
    name = "retention"
    description = "archive-delete of 6 old radio entries (~14 MB) to a throttled rclone remote; killed anywhere"
    timeout = 600.0

    def prepare(self, ctx: Context, root: Path) -> None:
        radio = _roots(root).radio
        old = time.time() - 30 * 86400
        files = [radio / "incoming" / f"2025-10-01T13:28:0{i}_sb{i:02d}.hdf5" for i in range(5)]
        files += [radio / "ms" / "science" / "2025-10-01" / "obs.ms" / name for name in ("table.f0", "table.dat")]
        for i, path in enumerate(files):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(os.urandom(2_000_000 + i))
            os.utime(path, (old, old))
        save_checksums(root, "radio", tree_checksums(radio))
        _tables(ctx, root)  # declare the schema once, before any kill

    def run(self, ctx: Context, root: Path) -> None:
        from labpipe.backup.archive import RcloneArchive
        from labpipe.backup.retention import Ledger, apply_retention, plan_retention

        plan = plan_retention(_roots(root), _policies())
        ledger = Ledger(_tables(ctx, root), root / "retention.jsonl")
        outcomes = apply_retention(plan, RcloneArchive(_remote(root)), ledger, REMOTE_FOLDER)
        failed = [(o.candidate.rel, o.detail) for o in outcomes if o.status == "failed"]
        if failed:
            raise SystemExit(f"retention failed for {failed}")

    def check(self, ctx: Context, root: Path, finished: bool = True) -> Outcome:
        radio = _roots(root).radio
        archived = root / "tape" / REMOTE_FOLDER / "radio"
        expected = load_checksums(root, "radio")
        verified = {
            row["path"]
            for row in _tables(ctx, root).RetentionAction.to_dicts()
            if row["status"] in ("verified", "deleted", "changed") and row["location"]
        }
        lost, remaining = [], []
        for rel, digest in expected.items():
            local = radio / rel
            if local.exists():
                remaining.append(rel)
                if sha256(local) != digest:
                    lost.append(f"{rel} (changed locally)")
                continue
            copy = archived / rel
            entry = next((v for v in verified if rel == v or rel.startswith(v + "/")), None)
            if not copy.is_file() or sha256(copy) != digest:
                lost.append(f"{rel} (deleted, no intact copy off-site)")
            elif entry is None:
                lost.append(f"{rel} (deleted before its copy was recorded verified)")
        half = partial_names(root / "tape")
        complete = not remaining or not finished
        return Outcome(complete=complete, lost_files=lost, half_written=half, detail=f"remaining {remaining[:3]}")


SCENARIO = Retention()
