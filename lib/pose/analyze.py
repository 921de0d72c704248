"""One video through DeepLabCut's ``analyze_videos`` into a staging folder, read back as arrays.

DeepLabCut writes ``<video stem><scorer>.h5`` (a pandas table with (scorer, bodyparts,
coords) columns, coords x / y / likelihood) and pickles of its run next to it. The
staging folder is this worker's alone (one per task key), so a crashed analysis
leaves nothing behind that the next attempt would mistake for a result.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput, ToolError
from labpipe.pose import dlc
from labpipe.pose.models import RunnableModel


@dataclass
class PoseResult:
    """Predicted positions of one video: ``x``, ``y``, ``likelihood`` are (frames, bodyparts)."""

    bodyparts: tuple[str, ...]
    x: np.ndarray
    y: np.ndarray
    likelihood: np.ndarray
    scorer: str
    h5: Path
    seconds: float
    device: str

    @property
    def n_frames(self) -> int:
        return int(self.x.shape[0])

    def positions(self) -> np.ndarray:
        """(frames, bodyparts, 2) x/y."""
        return np.stack([self.x, self.y], axis=-1)

    def mean_likelihood(self) -> dict[str, float]:
        return {bp: float(np.nanmean(self.likelihood[:, i])) for i, bp in enumerate(self.bodyparts)}


def read_pose_h5(h5: Path, bodyparts: tuple[str, ...]) -> tuple[str, np.ndarray, np.ndarray, np.ndarray]:
    """(scorer, x, y, likelihood) from a DeepLabCut single-animal result table."""
    import pandas as pd

    table = pd.read_hdf(h5)
    scorer = str(table.columns.get_level_values("scorer")[0])
    found = list(dict.fromkeys(table.columns.get_level_values("bodyparts")))
    if found != list(bodyparts):
        raise ToolError(h5, f"result bodyparts {found} are not the model's {list(bodyparts)}")
    data = table[scorer]
    columns = [np.stack([data[bp][c].to_numpy(dtype=np.float32) for bp in bodyparts], axis=1) for c in "xy"]
    likelihood = np.stack([data[bp]["likelihood"].to_numpy(dtype=np.float32) for bp in bodyparts], axis=1)
    return scorer, columns[0], columns[1], likelihood


def analyze_video(
    model: RunnableModel,
    video: Path,
    staging: Path,
    *,
    device: str = "auto",
    batch_size: int = 8,
    cpu_threads: int | None = None,
) -> PoseResult:
    """Run ``analyze_videos`` on one video, writing only into ``staging`` (emptied first)."""
    video = Path(video)
    if not video.is_file():
        raise InvalidInput(video, "video file not found")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    deeplabcut = dlc.deeplabcut()
    device = dlc.resolve_device(device)
    dlc.limit_cpu_threads(device, cpu_threads)
    began = time.monotonic()
    scorer = deeplabcut.analyze_videos(
        str(model.project_config),
        [str(video)],
        shuffle=1,
        device=device,
        destfolder=str(staging),
        batch_size=batch_size,
        save_as_csv=False,
        auto_track=False,
    )
    seconds = time.monotonic() - began
    h5 = staging / f"{video.stem}{scorer}.h5"
    if not h5.is_file():
        found = sorted(p.name for p in staging.iterdir())
        raise ToolError(video, f"analyze_videos wrote no {h5.name} (found {found})")
    scorer, x, y, likelihood = read_pose_h5(h5, model.card.bodyparts)
    return PoseResult(model.card.bodyparts, x, y, likelihood, scorer, h5, round(seconds, 2), device)
