"""Simulated behaviour videos with known marker positions, and DeepLabCut labelled frames cut from them.

The markers look like the dots of ``labpipe.ingest.simulate.write_video`` (a large and a small
white disc on black, circling the arena centre 1 rad apart at 0.5 Hz), so a model trained
here also tracks the videos of the simulated share. Unlike that writer, the true positions
are returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

BODYPARTS = ("large", "small")
RADII = (3.0, 2.0)


@dataclass
class MarkerTruth:
    """True marker centres: ``positions[frame, bodypart] = (x, y)`` in pixels (DeepLabCut's convention)."""

    positions: np.ndarray
    bodyparts: tuple[str, ...]
    fps: float
    size: int


def circling_positions(frames: int, size: int, fps: float, phase: float, *, hz: float = 0.5) -> np.ndarray:
    """(frames, 2, 2) x/y of the two markers circling at ``size / 4`` around the centre."""
    t = np.arange(frames) / fps
    positions = np.empty((frames, len(BODYPARTS), 2))
    for k in range(len(BODYPARTS)):
        angle = 2 * np.pi * hz * t + phase + k
        positions[:, k, 0] = size / 2 + size / 4 * np.cos(angle)
        positions[:, k, 1] = size / 2 + size / 4 * np.sin(angle)
    return positions


def render(positions: np.ndarray, size: int) -> np.ndarray:
    """(frames, size, size, 3) uint8 frames with each marker drawn as a disc of its radius."""
    yy, xx = np.mgrid[:size, :size]
    video = np.zeros((len(positions), size, size, 3), dtype=np.uint8)
    for i, frame_positions in enumerate(positions):
        for (x, y), radius in zip(frame_positions, RADII, strict=True):
            video[i][(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = 255
    return video


def write_marker_video(
    path: Path, *, frames: int = 48, size: int = 64, fps: float = 25.0, seed: int = 0, hz: float = 0.5
) -> MarkerTruth:
    """An H.264 .mp4 of the two circling markers; returns their true positions."""
    import imageio.v3 as iio

    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi)
    positions = circling_positions(frames, size, fps, phase, hz=hz)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, render(positions, size), fps=fps, codec="libx264", macro_block_size=16)
    return MarkerTruth(positions, BODYPARTS, float(fps), size)


def write_labelled_frames(
    folder: Path, video: Path, truth: MarkerTruth, *, n_frames: int = 16, scorer: str = "sim"
) -> Path:
    """Cut ``n_frames`` evenly spaced frames of ``video`` into ``folder/<video stem>/`` with their labels.

    Writes what DeepLabCut's labelling GUI writes: ``imgNNNN.png`` frames (decoded from the
    video file, compression included) and ``CollectedData_<scorer>.h5`` / ``.csv`` with a
    (scorer, bodyparts, coords) column index. Returns the ``.h5`` path.
    """
    import cv2
    import pandas as pd
    from labpipe.pose.video import read_frames

    video = Path(video)
    target = Path(folder) / video.stem
    target.mkdir(parents=True, exist_ok=True)
    chosen = np.unique(np.linspace(0, len(truth.positions) - 1, n_frames).round().astype(int))
    index, rows = [], []
    for i, frame in zip(chosen, read_frames(video, chosen), strict=True):
        name = f"img{i:04d}.png"
        cv2.imwrite(str(target / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        index.append(("labeled-data", video.stem, name))
        rows.append(truth.positions[i].ravel())
    columns = pd.MultiIndex.from_product(
        [[scorer], list(truth.bodyparts), ["x", "y"]], names=["scorer", "bodyparts", "coords"]
    )
    table = pd.DataFrame(np.asarray(rows, dtype=float), index=pd.MultiIndex.from_tuples(index), columns=columns)
    h5 = target / f"CollectedData_{scorer}.h5"
    table.to_hdf(h5, key="df_with_missing", mode="w")
    table.to_csv(target / f"CollectedData_{scorer}.csv")
    return h5


def pixel_errors(predicted: np.ndarray, truth: MarkerTruth) -> np.ndarray:
    """(frames, bodyparts) Euclidean distance between predicted and true x/y."""
    return np.hypot(*(np.asarray(predicted, dtype=float) - truth.positions).transpose(2, 0, 1))
