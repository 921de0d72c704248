"""Segmentation: nnU-Net windows over a simulated tomogram, killed anywhere from validation to the artifacts."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

from fault_scenarios import Context, Outcome, Scenario, partial_names, sha256

MODEL = "tiny-faults"
RUN = "faults-run"
SHAPE = (64, 72, 80)


def _layout(ctx: Context, root: Path):
    from labpipe.layout import Layout

    roots = Layout.default(root / "home").model_copy(update={"models": ctx.cache / "models"})
    return roots.ensure()


def _model(ctx: Context) -> None:
    """The tiny model, trained once per campaign into the cache (as tests/lib/seg/seg_model.py does)."""
    from labpipe.layout import Layout
    from labpipe.seg.nnunet import TrainingCase, train_model
    from labpipe.seg.simulate import LABELS, simulate_training_set

    with open(ctx.cache / "seg-model.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (ctx.cache / "models" / "seg" / MODEL).is_dir():
            return
        roots = Layout.default(ctx.cache / "seg-training").model_copy(update={"models": ctx.cache / "models"})
        pairs = simulate_training_set(roots.ensure().tomograms / MODEL, count=4, shape=(48, 48, 48))
        cases = [TrainingCase(a, b) for a, b in pairs]
        train_model(cases, name=MODEL, layout=roots, label_names=LABELS, network="tiny", epochs=1, iterations=2)


class Segmentation(Scenario):
    name = "segmentation"
    description = f"segment a {SHAPE} tomogram with a tiny nnU-Net model; artifacts appear all at once"

    def prepare(self, ctx: Context, root: Path) -> None:
        from labpipe.seg.simulate import simulate_tomogram, write_simulated

        _model(ctx)
        cached = ctx.cache / "tomogram.mrc"
        if not cached.exists():
            write_simulated(cached, simulate_tomogram(SHAPE, voxel_size=20.0, seed=5))
        tomogram = _layout(ctx, root).tomograms / "tomo.mrc"
        shutil.copy2(cached, tomogram)
        (root / "input.json").write_text(json.dumps({"tomo.mrc": sha256(tomogram)}))

    def run(self, ctx: Context, root: Path) -> None:
        from labpipe.seg.segment import SegmentationJob, segment_tomogram

        roots = _layout(ctx, root)
        job = SegmentationJob(roots.tomograms / "tomo.mrc", MODEL, run=RUN, mirroring=False, preview_every=0.5)
        segment_tomogram(job, roots)

    def check(self, ctx: Context, root: Path, finished: bool = True) -> Outcome:
        roots = _layout(ctx, root)
        expected = json.loads((root / "input.json").read_text())
        lost = [name for name, digest in expected.items() if sha256(roots.tomograms / name) != digest]
        final = roots.artifacts / RUN
        present = {name: (final / name).is_file() for name in ("mask.mrc", "mask.nii.gz", "mask.nrrd", "stats.json")}
        half = []
        if final.exists() and not all(present.values()):
            half.append(f"{final.name}/ without {[n for n, ok in present.items() if not ok]}")
        if finished:  # after the rerun, staged folders and scratch of the killed run must be gone too
            half += partial_names(roots.artifacts)
            half += [p.name for p in (roots.scratch / "seg").glob(f"{RUN}-*")]
        complete = all(present.values())
        if complete:
            import mrcfile

            with mrcfile.mmap(final / "mask.mrc", permissive=False) as mask:
                complete = tuple(mask.data.shape) == SHAPE
        return Outcome(complete=complete or not finished, lost_files=lost, half_written=half)


SCENARIO = Segmentation()
