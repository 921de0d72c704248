"""Imaging population: suite2p (OASIS) and the behaviour alignment of a simulated session, killed anywhere.

The share holds one session (a 64x64, 1500-frame ScanImage-like stack with ten cells, its Bpod and Harp
files), ingested into the trial's schemas. The step is what a restarted worker does: give back the jobs
reserved by dead workers (``clear_jobs(..., include_errors=False)``: a killed worker's reservation would
otherwise hold its key), then ``run_population`` imaging (ScanInfo -> suite2p -> MotionCorrection ->
Segmentation -> Fluorescence -> Activity[oasis], small CPU settings) and behaviour. The check: the share is
untouched; no staged (``.part``) name in the blob store or the scratch; after the rerun every table has its row,
suite2p's plane folder in the store holds its six arrays and loads, every ROI has dF/F and OASIS activity, the
trials are aligned, and the killed run's suite2p workspace is gone.
"""

from __future__ import annotations

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

PLANE_FILES = ["F.npy", "Fneu.npy", "iscell.npy", "ops.npy", "spks.npy", "stat.npy"]


def _layout(root: Path):
    from labpipe.layout import Layout

    return Layout.default(root / "home").ensure()


def _database(ctx: Context, root: Path):
    from labpipe.db.connect import LabDatabase
    from labpipe.db.target import DatabaseTarget

    return LabDatabase(DatabaseTarget.from_url(ctx.database_url), _layout(root).blobs, prefix=schema_prefix(root))


def _context(root: Path):
    from labpipe.calcium.schema import CalciumContext
    from labpipe.calcium.settings import Suite2pSettings

    roots = _layout(root)
    return CalciumContext(roots.share, roots.scratch, Suite2pSettings.small())


class ImagingPopulation(Scenario):
    name = "imaging-population"
    description = "suite2p + OASIS and Bpod/Harp alignment of a 64x64x1500 session, killed mid-population"
    timeout = 900.0

    def prepare(self, ctx: Context, root: Path) -> None:
        from labpipe.calcium.simulate import RecordingSpec
        from labpipe.ingest.run import ingest_share
        from labpipe.ingest.simulate_science import simulate_science_share

        cached = ctx.cache / "imaging-share"
        if not cached.exists():
            spec = RecordingSpec(frames=1500, height=64, width=64, cells=10, photons=8, rate_hz=0.6, seed=1)
            simulate_science_share(cached.with_suffix(".part"), 1, spec=spec, video=False)
            cached.with_suffix(".part").rename(cached)
        share = _layout(root).share
        shutil.rmtree(share)
        shutil.copytree(cached, share)
        save_checksums(root, "share", tree_checksums(share))
        assert ingest_share(_database(ctx, root), share).status == "succeeded"

    def run(self, ctx: Context, root: Path) -> None:
        from labpipe.calcium.populate import population_tables, run_population
        from labpipe.db.jobs import clear_jobs

        db = _database(ctx, root)
        clear_jobs(population_tables(db), include_errors=False)  # a killed worker's reservations
        for population in ("imaging", "behavior"):
            result = run_population(db, population, _context(root))
            if result.errors:
                raise SystemExit(f"{population}: {result.errors}")

    def check(self, ctx: Context, root: Path, finished: bool = True) -> Outcome:
        roots = _layout(root)
        lost = compare_tree(load_checksums(root, "share"), tree_checksums(roots.share))
        half = partial_names(roots.blobs)  # the final location; the scratch is staging until the rerun
        if not finished:
            return Outcome(complete=True, lost_files=lost, half_written=half)
        half += partial_names(roots.scratch)
        problems = self._products(ctx, root)
        workspaces = roots.scratch / "calcium" / "suite2p"
        half += [p.name for p in workspaces.iterdir()] if workspaces.exists() else []
        return Outcome(complete=not problems, lost_files=lost, half_written=half, detail="; ".join(problems))

    def _products(self, ctx: Context, root: Path) -> list[str]:
        import numpy as np
        from labpipe.behavior.schema import tables as behavior_tables
        from labpipe.calcium.schema import tables

        db = _database(ctx, root)
        t, b = tables(db), behavior_tables(db)
        counts = {
            name: len(getattr(t, name)())
            for name in ("ScanInfo", "Processing", "MotionCorrection", "Segmentation", "Fluorescence")
        }
        problems = [f"{name}: {n} rows, expected 1" for name, n in counts.items() if n != 1]
        if counts["Processing"] == 1:
            output = t.Processing().fetch1("output")
            if sorted(output.listdir()) != PLANE_FILES:
                problems.append(f"plane folder holds {sorted(output.listdir())}")
            else:
                folder = Path(output.full_path)
                if np.load(folder / "F.npy").shape[0] != len(t.Segmentation.Mask()):
                    problems.append("F.npy rows differ from the ROIs recorded")
        traces, activity = len(t.Fluorescence.Trace()), len(t.Activity.Trace & {"method": "oasis"})
        if not traces or traces != activity:
            problems.append(f"{traces} dF/F traces, {activity} OASIS traces")
        if len(b.BehaviorSession()) != 1 or not len(b.BehaviorSession.Trial()):
            problems.append("behaviour not aligned")
        return problems


SCENARIO = ImagingPopulation()
