"""borg create + prune + compact (the nightly's repository steps), killed anywhere; the rerun must complete.

The step opens the repository (``Borg.open``: never creates one; a stale lock of the killed run's borg is
broken only when its process is gone), creates an archive of the sources, prunes (keep_daily=1, so the old
archive made in ``prepare`` goes) and compacts. The kill is a SIGKILL of the worker's process group; borg runs
in its own session and gets SIGTERM through its parent-death signal, as it would when a worker dies.

check: sources byte-identical; after the rerun ``borg check`` (repository + archives) passes, the newest
archive holds every source file with its SHA-256, and no checkpoint archive is left over (half-written).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from fault_scenarios import Context, Outcome, Scenario, load_checksums, save_checksums, tree_checksums

PASSPHRASE = "fault campaign passphrase"


def _borg(root: Path):
    from labpipe.backup.borg import Borg
    from labpipe.backup.settings import BorgRepository

    repo = BorgRepository(repository=str(root / "repo"), passphrase=PASSPHRASE, lock_wait=120)
    return Borg(repo, backups_root=root, home=root / "home")


def _plan():
    from labpipe.backup.settings import BackupPlan

    return BackupPlan(compression="zstd,12", keep_daily=1, keep_weekly=0, keep_monthly=0, archive_prefix="faults")


class BorgCreatePrune(Scenario):
    name = "borg-create-prune"
    description = "borg create (zstd,12) of a ~24 MB lab share, prune and compact; killed anywhere"
    timeout = 600.0

    def prepare(self, ctx: Context, root: Path) -> None:
        import datetime as dt
        import shutil

        from labpipe.backup.simulate import write_lab_share

        cached = ctx.cache / "borg-share"
        if not cached.exists():
            write_lab_share(cached, tif_mb=12, csv_mb=4, video_mb=6, dump_mb=2)
        src = root / "src"
        shutil.copytree(cached, src / "data")
        save_checksums(root, "sources", tree_checksums(src))
        borg = _borg(root)
        borg.init()
        old = dt.datetime(2000, 1, 1)
        borg.create("faults-2000-01-01T00:00:00", ["data"], cwd=src, plan=_plan(), timestamp=old)

    def run(self, ctx: Context, root: Path) -> None:
        from labpipe.backup.borg import archive_name
        from labpipe.errors import ConflictError

        borg, plan = _borg(root), _plan()
        borg.open()
        borg.break_stale_lock()
        for _ in range(5):
            try:
                name = archive_name(plan.archive_prefix)
                borg.create(name, ["data"], cwd=root / "src", plan=plan)
                break
            except ConflictError:  # an archive of this second exists (the killed run's, completed)
                time.sleep(1.1)
        borg.prune(plan)
        borg.compact()

    def check(self, ctx: Context, root: Path, finished: bool = True) -> Outcome:
        expected = load_checksums(root, "sources")
        lost = sorted(p for p, d in expected.items() if tree_checksums(root / "src").get(p) != d)
        if not finished:  # the killed run's borg may still be rolling back: only the sources count now
            return Outcome(complete=True, lost_files=lost)
        borg = _borg(root)
        result = borg.check(repository=True, last_archives=3)
        archives = [a["name"] for a in borg.archives("faults")]
        half = [name for name in archives if name.endswith(".checkpoint")]
        full = [name for name in archives if not name.endswith(".checkpoint")]
        complete, detail = result.ok and bool(full), "; ".join(result.problems[:3])
        if complete:
            stored = {
                e["path"]: e.get("sha256") for e in borg.files(full[-1], checksums=True) if e.get("type", "-") == "-"
            }
            missing = sorted(p for p, d in expected.items() if stored.get(p) != d)
            complete = not missing
            detail = detail or (f"newest archive {full[-1]} lacks {missing[:3]}" if missing else "")
        if "faults-2000-01-01T00:00:00" in archives:
            complete, detail = False, (detail + "; old archive not pruned").strip("; ")
        (root / "check.json").write_text(json.dumps({"archives": archives, "problems": result.problems}))
        return Outcome(complete=complete, lost_files=lost, half_written=half, detail=detail)


SCENARIO = BorgCreatePrune()
