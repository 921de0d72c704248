"""One small pose model per test session (trained on simulated markers, published to the registry), and shares.

Both tests/lib/pose and tests/flows/test_pose.py use it; ``trained_model`` is cached per
process, so the session trains once. The registry sits where workers started with the
same ``LABPIPE_HOME`` find it by default (``<models root>/registry``).
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from pathlib import Path

from labpipe.ingest.naming import session_folder_name
from labpipe.layout import Layout
from labpipe.pose.labelled import load_labelled_set
from labpipe.pose.models import PoseModelCard, RegistryModelStore
from labpipe.pose.settings import PoseTrainingSettings
from labpipe.pose.simulate import MarkerTruth, write_labelled_frames, write_marker_video
from labpipe.pose.train import TrainedModel, train_model
from labpipe.registry import ModelStoreSettings

MODEL = "dots-test"
FPS, SIZE = 25.0, 64
# 20 frames (16 train), batch 4, 30 epochs: median 1.1 px, all frames within 3 px on held-out videos (measured);
# one torch thread: on 2 cores shared with other work, 2 threads ran 5x slower
SETTINGS = PoseTrainingSettings.small(batch_size=4, cpu_threads=1)
LABELLED_FRAMES = 20


@dataclass
class TrainedSetup:
    home: Path
    trained: TrainedModel
    card: PoseModelCard
    store: RegistryModelStore
    source: Path  # folder with videos/ and labeled-data/


def store_for(home: Path) -> RegistryModelStore:
    roots = Layout.default(home)
    return RegistryModelStore(ModelStoreSettings().open(roots), roots.scratch / "pose" / "projects")


@functools.cache
def trained_model(home: Path) -> TrainedSetup:
    source = home / "pose-source"
    truth = write_marker_video(source / "videos" / "train_cam.mp4", frames=100, size=SIZE, fps=FPS, seed=1)
    write_labelled_frames(source / "labeled-data", source / "videos" / "train_cam.mp4", truth, n_frames=LABELLED_FRAMES)
    labelled = load_labelled_set(source / "labeled-data", videos=source / "videos")
    trained = train_model(labelled, MODEL, Layout.default(home).models / "pose-training", SETTINGS)
    store = store_for(home)
    return TrainedSetup(home, trained, store.publish(trained), store, source)


@dataclass
class VideoSpec:
    name: str
    seed: int
    fps: float = FPS
    size: int = SIZE
    frames: int = 48


def write_pose_share(share: Path, specs: list[VideoSpec], *, start: int = 0) -> dict[str, MarkerTruth]:
    """One ADAMACS session folder per video (alice/AB_ANM-..._sessXXXX/scanXXXX/<name>); truth by file name."""
    truths = {}
    for i, spec in enumerate(specs, start=start):
        session_id = f"POSE{i:04d}"
        folder = session_folder_name("AB", f"ANM-{3000 + i}", dt.date(2026, 3, 1) + dt.timedelta(days=i), session_id)
        path = share / "alice" / folder / f"scan{session_id}" / spec.name
        truths[spec.name] = write_marker_video(path, frames=spec.frames, size=spec.size, fps=spec.fps, seed=spec.seed)
    return truths
