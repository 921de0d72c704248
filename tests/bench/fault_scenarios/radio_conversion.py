"""Radio conversion: a simulated group of 16 subbands streamed in, killed anywhere from the scan to the rename.

The step is what a worker does each minute (``radio-stream`` then ``radio-convert``): recover groups of
dead workers, scan ``incoming/``, claim and convert. After a kill the rerun (a new worker) finds the killed
worker's process gone, puts its group back to pending, removes that attempt's folders and converts it.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from pathlib import Path

from fault_scenarios import (
    Context,
    Outcome,
    Scenario,
    compare_tree,
    load_checksums,
    partial_names,
    save_checksums,
    schema_prefix,
    tree_checksums,
)

N_ANTENNAS, N_TIMES = 12, 16


def _settings(root: Path):
    from labpipe.radio.stream import RadioSettings

    tmpfs = Path("/dev/shm") / f"labpipe-faults-{hashlib.sha256(str(root).encode()).hexdigest()[:10]}"
    return RadioSettings(tmpfs_root=tmpfs, min_file_age_s=0, fsync=True)


def _db(ctx: Context, root: Path):
    from labpipe.db.connect import LabDatabase
    from labpipe.db.target import DatabaseTarget

    return LabDatabase(DatabaseTarget.from_url(ctx.database_url), root / "blobs", schema_prefix(root))


def _tree(root: Path):
    from labpipe.radio.tree import RadioTree

    return RadioTree(root / "radio").ensure()


def _ms_rows(path: Path) -> int | None:
    from casacore.tables import table

    try:
        with table(str(path), ack=False) as ms:
            return ms.nrows()
    except RuntimeError:
        return None


class RadioConversion(Scenario):
    name = "radio-conversion"
    description = f"convert a streamed group ({N_ANTENNAS} antennas, {N_TIMES} integrations, 16 subbands) to one MS"
    timeout = 300.0

    def prepare(self, ctx: Context, root: Path) -> None:
        from labpipe.radio.simulate import simulate_group
        from labpipe.radio.uvh5 import read_header

        cached = ctx.cache / "radio-group"
        if not cached.is_dir():
            simulate_group(cached.with_suffix(".tmp"), None, n_antennas=N_ANTENNAS, n_times=N_TIMES, catalog=[], seed=3)
            cached.with_suffix(".tmp").rename(cached)
        tree = _tree(root)
        for path in sorted(cached.glob("*.hdf5")):
            shutil.copy2(path, tree.incoming / path.name)
        save_checksums(root, "incoming", tree_checksums(tree.incoming))
        first = sorted(tree.incoming.glob("*.hdf5"))[0]
        (root / "expected_rows").write_text(str(read_header(first).n_blts))

    def run(self, ctx: Context, root: Path) -> None:
        from labpipe.radio.stream import convert_pending, recover_stuck, scan_incoming

        db, tree, settings = _db(ctx, root), _tree(root), _settings(root)
        recover_stuck(db, settings, tree=tree, convert_settings=settings)
        scan_incoming(db, tree, settings)
        outcomes = convert_pending(db, tree, settings=settings)
        with contextlib.suppress(OSError):
            settings.tmpfs_root.rmdir()  # this trial's tmpfs root, empty once every attempt removed its folders
        if any(o["state"] != "completed" for o in outcomes):
            raise SystemExit(f"not converted: {outcomes}")

    def check(self, ctx: Context, root: Path, finished: bool = True) -> Outcome:
        tree, settings = _tree(root), _settings(root)
        lost = compare_tree(load_checksums(root, "incoming"), tree_checksums(tree.incoming))
        expected = int((root / "expected_rows").read_text())
        half = partial_names(tree.ms)
        finals = [p for kind in ("science", "calibrators", "failed") for p in (tree.ms / kind).glob("*/*.ms")]
        half += [f"{p.relative_to(tree.root)} ({_ms_rows(p)} rows)" for p in finals if _ms_rows(p) != expected]
        complete, detail = True, ""
        if finished:
            from labpipe.radio.schema import tables

            db = _db(ctx, root)
            try:
                groups = tables(db).SubbandGroup.to_dicts()
            finally:
                db.connection.close()
            done = [g for g in groups if g["state"] == "completed"]
            complete = len(groups) == 1 and len(done) == 1 and done[0]["flagged"] == ""
            complete = complete and _ms_rows(tree.root / done[0]["ms_path"]) == expected
            detail = f"groups {[(g['group_id'], g['state'], g['flagged']) for g in groups]}"
            leftovers = [p for p in tree.staging.rglob("*")]
            if settings.tmpfs_root.exists():
                leftovers += list(settings.tmpfs_root.rglob("*"))
                shutil.rmtree(settings.tmpfs_root, ignore_errors=True)
            half += [f"leftover {p}" for p in leftovers]
        return Outcome(complete=complete, lost_files=lost, half_written=half, detail=detail)


SCENARIO = RadioConversion()
