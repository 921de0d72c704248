"""DataJoint population: an imaging worker (motion correction, then ROIs and dF/F) killed mid-way.

The rerun is a new worker as the schedule starts one: it releases the reservations of workers that are gone
(``recover_reserved_jobs``, the rule the ``recover-jobs`` flow runs) and populates until nothing is left. The check
asks for every task computed once, every stored array loadable with the right shape, the share untouched and no
partial file in the blob store.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

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

FRAMES = 384  # longer stacks than the simulator's 64 frames, so a worker spends its time computing


def _db(ctx: Context, root: Path):
    from labpipe.db.connect import LabDatabase
    from labpipe.db.target import DatabaseTarget

    return LabDatabase(DatabaseTarget.from_url(ctx.database_url), root / "blobs", schema_prefix(root))


def _key(table, row: dict) -> str:
    return "/".join(str(row[k]) for k in table.primary_key)


def _array(value) -> np.ndarray:
    return np.asarray(value.load() if hasattr(value, "load") else value)


class DatajointPopulation(Scenario):
    name = "datajoint-population"
    description = f"populate MotionCorrection and Segmentation of 6 stacks of {FRAMES} frames on embedded PostgreSQL"

    def prepare(self, ctx: Context, root: Path) -> None:
        import tifffile
        from labpipe.ingest.run import ingest_share
        from labpipe.ingest.simulate import simulate_share

        share = root / "share"
        sim = simulate_share(share, sessions_per_user=3, malformed=False, users={"alice": "AB", "bob": "BC"})
        for rel in sim.stacks:  # the same cells and motion, repeated: longer recordings
            stack = tifffile.imread(share / rel)
            tifffile.imwrite(share / rel, np.concatenate([stack] * (FRAMES // len(stack))))
        ingest_share(_db(ctx, root), share)
        save_checksums(root, "share", tree_checksums(share))

    def run(self, ctx: Context, root: Path) -> None:
        from labpipe.db.jobs import recover_reserved_jobs
        from labpipe.ingest.populate import population_tables, run_population

        db = _db(ctx, root)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            released = recover_reserved_jobs(population_tables(db, "imaging"))
            if released:
                print(f"released {len(released)} reservations: {[j.message for j in released]}", flush=True)
            result = run_population(db, "imaging", root / "share")
            if result.errors:
                raise SystemExit(f"population errors: {result.errors}")
            if not any(result.remaining.values()):
                return
            time.sleep(0.5)  # a reservation whose connection the server has not yet seen close
        raise SystemExit(f"keys left after 180 s: {result.remaining}")

    def check(self, ctx: Context, root: Path, finished: bool = True) -> Outcome:
        from labpipe.ingest.schema import tables

        lost = compare_tree(load_checksums(root, "share"), tree_checksums(root / "share"))
        t = tables(_db(ctx, root))
        half = []
        for row in t.MotionCorrection.to_dicts():  # a stored row is whole: its arrays load with their shapes
            try:
                if _array(row["shifts"]).shape != (FRAMES, 2):
                    half.append(f"MotionCorrection {_key(t.MotionCorrection, row)}: shifts of wrong shape")
            except Exception as exc:
                half.append(f"MotionCorrection {_key(t.MotionCorrection, row)}: {exc}")
        for row in t.Segmentation.to_dicts():
            try:
                labels, dff = _array(row["labels"]), _array(row["dff"])
                if labels.ndim != 2 or dff.shape[-1] != FRAMES:
                    half.append(f"Segmentation {_key(t.MotionCorrection, row)}: arrays of wrong shape")
            except Exception as exc:
                half.append(f"Segmentation {_key(t.MotionCorrection, row)}: {exc}")
        if finished:
            half += partial_names(root / "blobs")
        tasks = len(t.ImagingTask())
        complete = tasks > 0 and len(t.MotionCorrection()) == len(t.Segmentation()) == tasks
        if finished and complete:
            complete = not len(t.MotionCorrection.jobs & "status in ('reserved', 'error')")
        return Outcome(complete=complete or not finished, lost_files=lost, half_written=half)


SCENARIO = DatajointPopulation()
