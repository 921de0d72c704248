"""Pose benchmark: the small DeepLabCut model against baselines, training and analysis speed, crop sampling cost.

Run alone on the machine:  flock /tmp/labpipe-bench.lock .venv/bin/python tests/bench/pose.py

Measured in the same run:
- accuracy on held-out simulated videos (markers with known positions): median pixel error and
  fraction within 5 px of the trained model, against two baselines: random guessing (uniform over
  the frame) and a classical tracker (threshold, connected components, the larger blob is "large");
- training time of the small settings (20 labelled frames, 30 epochs) and analysis speed;
- seconds per epoch with DeepLabCut's 448x448 crop sampling kept versus removed (the reason
  ``crop_sampling: auto`` removes it for small videos).
The last line is one JSON object with these figures.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("MPLBACKEND", "Agg")


def classical_tracker(video: Path) -> np.ndarray:
    """(frames, 2, 2): centroids of the two brightest blobs, larger one first."""
    from labpipe.pose.video import probe_video, read_frames
    from scipy import ndimage

    info = probe_video(video)
    out = np.full((info.frames, 2, 2), np.nan)
    for i, frame in enumerate(read_frames(video, range(info.frames))):
        labels, n = ndimage.label(frame.mean(axis=2) > 128)
        if n < 2:
            continue
        sizes = ndimage.sum(np.ones_like(labels), labels, range(1, n + 1))
        order = np.argsort(sizes)[::-1][:2] + 1
        for k, label in enumerate(order):
            y, x = ndimage.center_of_mass(labels == label)
            out[i, k] = (x, y)
    return out


def main() -> None:
    from labpipe.pose.analyze import analyze_video
    from labpipe.pose.labelled import load_labelled_set
    from labpipe.pose.models import RegistryModelStore
    from labpipe.pose.settings import PoseTrainingSettings
    from labpipe.pose.simulate import pixel_errors, write_labelled_frames, write_marker_video
    from labpipe.pose.train import train_model
    from labpipe.registry import ModelStoreSettings

    threads = int(os.environ.get("POSE_BENCH_THREADS", "0")) or None
    root = Path(tempfile.mkdtemp(prefix="pose-bench-"))
    truth = write_marker_video(root / "src" / "videos" / "train_cam.mp4", frames=100, seed=1)
    write_labelled_frames(root / "src" / "labeled-data", root / "src" / "videos" / "train_cam.mp4", truth, n_frames=20)
    labelled = load_labelled_set(root / "src" / "labeled-data", videos=root / "src" / "videos")

    began = time.monotonic()
    from labpipe.pose import dlc

    dlc.deeplabcut()
    import_seconds = time.monotonic() - began
    settings = PoseTrainingSettings.small(batch_size=4, cpu_threads=threads)
    trained = train_model(labelled, "bench", root / "work", settings)
    store = RegistryModelStore(ModelStoreSettings(root=root / "registry", cache_dir=root / "cache").open(), root / "p")
    store.publish(trained)
    model = store.resolve("bench")

    model_errors, random_errors, classical_errors, frames, seconds = [], [], [], 0, 0.0
    rng = np.random.default_rng(0)
    for seed in (101, 102, 103):
        video = root / "test" / f"cam{seed}.mp4"
        test = write_marker_video(video, frames=200, seed=seed)
        result = analyze_video(model, video, root / "staging" / str(seed), device="cpu", cpu_threads=threads)
        frames, seconds = frames + result.n_frames, seconds + result.seconds
        model_errors.append(pixel_errors(result.positions(), test).ravel())
        random_errors.append(pixel_errors(rng.uniform(0, 64, test.positions.shape), test).ravel())
        classical_errors.append(pixel_errors(classical_tracker(video), test).ravel())
    model_err, random_err, classical_err = (np.concatenate(e) for e in (model_errors, random_errors, classical_errors))

    epoch = {}
    for crop in ("remove", "keep"):
        quick = PoseTrainingSettings.small(batch_size=4, epochs=2, crop_sampling=crop, cpu_threads=threads)
        quick_model = train_model(labelled, f"crop-{crop}", root / "work", quick)
        epoch[crop] = quick_model.training_seconds / 2

    figures = {
        "median_error_px": round(float(np.median(model_err)), 2),
        "within_5px": round(float(np.mean(model_err < 5)), 3),
        "max_error_px": round(float(np.max(model_err)), 1),
        "baseline_random_median_px": round(float(np.median(random_err)), 1),
        "baseline_classical_median_px": round(float(np.nanmedian(classical_err)), 2),
        "dlc_train_error_px": trained.evaluation.train_error_px,
        "dlc_test_error_px": trained.evaluation.test_error_px,
        "train_seconds": trained.training_seconds,
        "deeplabcut_import_seconds": round(import_seconds, 1),
        "analysis_frames_per_second": round(frames / seconds, 1),
        "epoch_seconds_crop_removed": round(epoch["remove"], 2),
        "epoch_seconds_crop_kept": round(epoch["keep"], 2),
        "cpu_threads": threads or "default",
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
