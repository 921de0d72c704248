"""Segmentation demo: train (or reuse) the tiny nnU-Net model, then segment a simulated tomogram on the gpu pool."""

from __future__ import annotations

import json

from labpipe.deployments.demo import DemoContext, DemoResult

ORDER = 30
TOMOGRAM = "demo_tomogram.mrc"
RUN = "demo-tomogram"


def _dice(mask, truth, value: int) -> float:
    a, b = mask == value, truth == value
    return 2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0)


def run(ctx: DemoContext) -> DemoResult:
    import mrcfile
    from labpipe.seg.simulate import LABELS, labels_path, simulate_tomogram, write_simulated

    roots = ctx.layout.ensure()
    trained = ctx.run("train-seg-model/tiny", {"name": "tiny"}, timeout=1800)
    tomogram = roots.tomograms / TOMOGRAM
    if not tomogram.exists():  # kept between demos, so a second demo finds the run done and reuses it
        write_simulated(tomogram, simulate_tomogram((64, 96, 96), seed=7), origin_xyz=(0.0, 0.0, 0.0))
    ctx.say(f"simulated tomogram {tomogram} (64x96x96 voxels of 20 A, labels in {labels_path(tomogram).name})")
    segmented = ctx.run(
        "segment/tomogram",
        {"tomogram": TOMOGRAM, "model": "tiny", "run": RUN, "mirroring": False, "preview_every": 2.0},
        timeout=1800,
    )
    folder = roots.artifacts / RUN
    files = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    lines = [f"model: {roots.models / 'seg' / 'tiny'} ({'trained' if trained.state.is_completed() else 'FAILED'})"]
    ok = bool(trained.state and trained.state.is_completed() and segmented.state and segmented.state.is_completed())
    if (folder / "stats.json").exists():
        stats = json.loads((folder / "stats.json").read_text())
        mask = mrcfile.read(folder / "mask.mrc").astype("uint8")
        truth = mrcfile.read(labels_path(tomogram)).astype("uint8")
        dice = ", ".join(f"{LABELS[v]} {_dice(mask, truth, v):.2f}" for v in (1, 2))
        lines += [
            f"artifacts in {folder}: {', '.join(files)}",
            f"{stats['tiles']} windows on {stats.get('device')} with {stats.get('workers')} Dask worker(s); "
            f"membrane {stats['labels']['membrane']['volume_nm3']:.3g} nm^3, "
            f"{stats['labels']['membrane']['surface_area_nm2']:.3g} nm^2",
            f"Dice against the simulated truth (a seconds-trained tiny model): {dice}",
            "previews and the summary are artifacts of the segment run in the Prefect UI",
        ]
    ok = ok and files == ["mask.mrc", "mask.nii.gz", "mask.nrrd", "stats.json"]
    return DemoResult("segmentation", ok, lines)
