"""A simulated session as the lab records it: a ScanImage stack, Bpod and Harp files, a behaviour video.

Each scan folder holds ``imaging_00001.tif`` (a realistic stack with ScanImage headers),
``<animal>_GoNoGo_<date>_<time>.mat`` (Bpod), ``harp/Behavior_32.bin`` and ``_34.bin``
(Harp) and ``behavior_cam0.mp4``; the truth of each (cells, spikes, trials) is returned,
never written into the share.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.behavior.simulate import BehaviorTruth, write_session
from labpipe.calcium.simulate import RecordingSpec, RecordingTruth, write_recording
from labpipe.ingest.naming import session_folder_name
from labpipe.ingest.simulate import random_id, write_video


@dataclass
class ScienceScan:
    folder: str  # relative to the share root
    animal_id: str
    session_date: dt.date
    recording: RecordingTruth
    behavior: BehaviorTruth
    bpod_file: str


@dataclass
class ScienceShare:
    root: Path
    scans: list[ScienceScan] = field(default_factory=list)


def write_science_scan(
    scan_dir: Path, spec: RecordingSpec, *, animal_id: str, started: dt.datetime, video: bool = True
) -> tuple[RecordingTruth, BehaviorTruth, str]:
    """Write one scan's raw files; returns the truths and the Bpod file's name."""
    scan_dir.mkdir(parents=True, exist_ok=True)
    recording = write_recording(scan_dir / "imaging_00001.tif", spec)
    mat, _, behavior = write_session(
        scan_dir,
        subject=animal_id,
        started=started,
        imaging_frames=spec.frames,
        frame_rate=spec.frame_rate,
        seed=spec.seed,
    )
    if video:
        write_video(scan_dir / "behavior_cam0.mp4", np.random.default_rng(spec.seed), frames=24, size=64)
    return recording, behavior, mat.name


def simulate_science_share(
    root: Path,
    sessions: int = 1,
    *,
    spec: RecordingSpec | None = None,
    username: str = "alice",
    initials: str = "AB",
    start: dt.date = dt.date(2026, 2, 10),
    seed: int = 0,
    video: bool = True,
) -> ScienceShare:
    """``sessions`` session folders of one user, one scan each, under ``root``."""
    rng = np.random.default_rng(seed)
    spec = spec or RecordingSpec()
    share = ScienceShare(Path(root))
    for s in range(sessions):
        session_id = random_id(rng)
        date = start + dt.timedelta(days=s)
        animal = f"ANM-{2100 + s}"
        folder = f"{username}/{session_folder_name(initials, animal, date, session_id)}/scan{session_id}"
        started = dt.datetime.combine(date, dt.time(14, 3, 12))
        recording, behavior, mat = write_science_scan(
            share.root / folder,
            spec.model_copy(update={"seed": spec.seed + s}),
            animal_id=animal,
            started=started,
            video=video,
        )
        share.scans.append(ScienceScan(folder, animal, date, recording, behavior, mat))
    return share
