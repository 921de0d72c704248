"""Benchmark: labpipe's segment flow against nnU-Net's own predictor on one simulated tomogram.

Run alone on the machine:

    flock /tmp/labpipe-bench.lock .venv/bin/python tests/bench/segment.py [--size 256]

In one run, on a ``size``^3 simulated tomogram (20 A voxels) and the tiny model
(trained once into the benchmark's home and reused by later runs):

- ``predictor_s``: ``nnUNetPredictor.predict_single_npy_array`` (the baseline),
- ``flow_1w_s`` / ``flow_2w_s``: the ``segment`` flow (validation, Dask LocalCluster
  start, windows, labels, the four artifacts) with one and two Dask workers,
- ``preview_overhead``: (flow with previews every 2 s - flow without) / flow without, one worker,
- ``agreement``: fraction of voxels where the flow's mask equals the predictor's.

Both sides use nnU-Net's step 0.5 and no test-time mirroring (mirroring costs
both 8x and changes nothing in the comparison). Targets from the issue: flow
with one worker within 1.15x of the predictor, previews under 5%.
The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def _load() -> float:
    return os.getloadavg()[0]


def _trained_model(home: Path):
    from labpipe.layout import Layout
    from labpipe.seg.nnunet import TrainingCase, load_model_info, train_model
    from labpipe.seg.simulate import LABELS, simulate_training_set

    roots = Layout.default(home).ensure()
    try:
        return load_model_info(roots, "bench-tiny")
    except Exception:
        pairs = simulate_training_set(roots.tomograms / "training" / "bench-tiny", count=4, shape=(48, 48, 48))
        cases = [TrainingCase(a, b) for a, b in pairs]
        return train_model(
            cases,
            name="bench-tiny",
            layout=roots,
            label_names=LABELS,
            network="tiny",
            epochs=2,
            iterations=10,
            device="cpu",
        ).model


def _predictor_seconds(model, path: Path):
    import mrcfile
    import numpy as np
    import torch
    from labpipe.seg.tiles import initialize_predictor
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    initialize_predictor(predictor, model.folder, ("all",))
    started = time.monotonic()
    image = mrcfile.read(path).astype(np.float32)[None]
    labels = predictor.predict_single_npy_array(image, {"spacing": list(model.voxel_size_zyx)})
    return time.monotonic() - started, labels


def _flow_seconds(model, tomogram: Path, run: str, workers: int, preview_every: float) -> tuple[float, dict]:
    from labpipe.flows.segment import segment

    started = time.monotonic()
    state = segment(
        tomogram=str(tomogram),
        model=model.name,
        run=run,
        mirroring=False,
        workers=workers,
        preview_every=preview_every,
        preview_factor=4,
        return_state=True,
    )
    seconds = time.monotonic() - started
    if not state.is_completed():
        raise SystemExit(f"flow run {run} ended {state.name}: {state.message}")
    return seconds, state.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the simulated tomogram (voxels)")
    parser.add_argument("--home", type=Path, default=Path("/tmp/labpipe-bench-seg"), help="benchmark LABPIPE_HOME")
    args = parser.parse_args()
    os.environ["LABPIPE_HOME"] = str(args.home)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    import logging

    logging.getLogger("distributed").setLevel(logging.WARNING)
    import mrcfile
    from labpipe.deployments.platform import ensure_gpu_limit
    from labpipe.layout import Layout
    from labpipe.seg.simulate import simulate_tomogram, write_simulated
    from prefect.testing.utilities import prefect_test_harness

    roots = Layout.default(args.home).ensure()
    load_before = _load()
    model = _trained_model(args.home)
    tomogram = roots.tomograms / f"bench_{args.size}.mrc"
    if not tomogram.exists():
        write_simulated(
            tomogram, simulate_tomogram((args.size,) * 3, voxel_size=20.0, particles=40, vesicles=6, seed=3)
        )
    for old in roots.artifacts.glob("bench-*"):
        shutil.rmtree(old)
    print(f"model {model.name}: patch {model.patch_size}; tomogram {args.size}^3; load {load_before:.1f}", flush=True)

    predictor_s, reference = _predictor_seconds(model, tomogram)
    print(f"nnUNetPredictor: {predictor_s:.1f} s", flush=True)
    with prefect_test_harness(server_startup_timeout=300):
        from prefect import get_client

        with get_client(sync_client=True) as client:
            ensure_gpu_limit(client, 0)
        plain_s, plain = _flow_seconds(model, tomogram, "bench-1w-nopreview", 1, 0)
        print(f"flow, 1 worker, no previews: {plain_s:.1f} s {plain['seconds']}", flush=True)
        flow_1w_s, one = _flow_seconds(model, tomogram, "bench-1w", 1, 2.0)
        print(f"flow, 1 worker, previews every 2 s: {flow_1w_s:.1f} s ({one['previews']} previews)", flush=True)
        flow_2w_s, two = _flow_seconds(model, tomogram, "bench-2w", 2, 2.0)
        print(f"flow, 2 workers, previews every 2 s: {flow_2w_s:.1f} s {two['seconds']}", flush=True)
    mask = mrcfile.read(roots.artifacts / "bench-1w" / "mask.mrc").astype("uint8")
    mask_2w = mrcfile.read(roots.artifacts / "bench-2w" / "mask.mrc").astype("uint8")
    figures = {
        "predictor_s": round(predictor_s, 2),
        "flow_1w_s": round(flow_1w_s, 2),
        "flow_2w_s": round(flow_2w_s, 2),
        "preview_overhead": round((flow_1w_s - plain_s) / plain_s, 4),
        "agreement": float((mask == reference).mean()),
        "agreement_2w": float((mask_2w == reference).mean()),
        "flow_1w_over_predictor": round(flow_1w_s / predictor_s, 3),
        "speedup_2w_over_1w": round(flow_1w_s / flow_2w_s, 3),
        "flow_1w_nopreview_s": round(plain_s, 2),
        "windows": one["tiles"],
        "previews": one["previews"],
        "size": args.size,
        "cores": os.cpu_count(),
        "load_before": round(load_before, 2),
        "load_after": round(_load(), 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    sys.exit(main())
