"""Labelled frames in DeepLabCut's own format, found, checked and fingerprinted before any training.

A labelled set is one or more folders ``<video stem>/`` each holding frames (``img*.png``)
and ``CollectedData_<scorer>.h5`` (or ``.csv``), as DeepLabCut's labelling GUI writes them
under a project's ``labeled-data``. The source video of each folder must be found (by its
exact stem, never by a loose glob): its frame rate and resolution are what the trained
model will accept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.files import sha256_file
from labpipe.pose.video import VIDEO_SUFFIXES, VideoInfo, probe_video

MIN_FRAMES = 4


@dataclass
class LabelledVideo:
    """The labelled frames of one video: its folder, labels file, source video and the labels as a table."""

    folder: Path
    labels_file: Path
    video: VideoInfo
    labels: object  # pandas DataFrame with (scorer, bodyparts, coords) columns

    @property
    def stem(self) -> str:
        return self.folder.name


@dataclass
class LabelledSet:
    """Every labelled video of a training set, with what they agree on."""

    root: Path
    scorer: str
    bodyparts: list[str]
    videos: list[LabelledVideo]
    fps: float
    width: int
    height: int
    fingerprint: str
    project_config: Path | None = None  # set when the frames sit in an existing DeepLabCut project
    notes: list[str] = field(default_factory=list)

    @property
    def n_frames(self) -> int:
        return sum(len(v.labels) for v in self.videos)

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "scorer": self.scorer,
            "bodyparts": self.bodyparts,
            "videos": [v.stem for v in self.videos],
            "labelled_frames": self.n_frames,
            "fps": self.fps,
            "resolution": f"{self.width}x{self.height}",
            "fingerprint": self.fingerprint,
            "existing_project": str(self.project_config) if self.project_config else None,
        }


def _read_labels(path: Path):
    import pandas as pd

    try:
        table = pd.read_hdf(path) if path.suffix == ".h5" else pd.read_csv(path, header=[0, 1, 2], index_col=[0, 1, 2])
    except Exception as exc:
        raise InvalidInput(path, f"labels file does not read as a DeepLabCut table: {exc}") from exc
    if table.columns.nlevels == 4:
        raise InvalidInput(path, "multi-animal labels (individuals level) are not supported", "use a single-animal set")
    if table.columns.nlevels != 3 or list(table.columns.names) != ["scorer", "bodyparts", "coords"]:
        raise InvalidInput(path, f"expected columns (scorer, bodyparts, coords), found {list(table.columns.names)}")
    return table


def _labels_files(root: Path) -> list[Path]:
    files: dict[Path, Path] = {}
    for path in sorted(root.rglob("CollectedData_*")):
        hidden = any(p.startswith(".") for p in path.relative_to(root).parts)
        # DeepLabCut writes both; the .h5 is the one it reads
        if path.suffix in (".h5", ".csv") and not hidden and (path.suffix == ".h5" or path.parent not in files):
            files[path.parent] = path
    return [files[k] for k in sorted(files)]


def find_source_video(stem: str, search: list[Path]) -> Path:
    """The one video named ``<stem>.<video suffix>`` in the search folders (recursively); refuses 0 or >1."""
    found = sorted(
        {
            p.resolve()
            for folder in search
            if folder.is_dir()
            for p in folder.rglob(f"{stem}.*")
            if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()
        }
    )
    where = ", ".join(str(s) for s in search)
    if not found:
        raise InvalidInput(
            stem,
            f"source video of the labelled frames not found in {where}",
            "its frame rate and resolution define what the model accepts; pass the folder holding it as videos",
        )
    if len(found) > 1:
        raise InvalidInput(
            stem,
            f"several candidate source videos: {[str(p) for p in found]}",
            "name the one the frames were cut from by passing its folder as videos",
        )
    return found[0]


def _project_config(root: Path) -> Path | None:
    for folder in (root, *root.parents[:3]):
        config = folder / "config.yaml"
        if config.is_file() and (folder / "labeled-data").is_dir():
            return config
    return None


def load_labelled_set(root: Path, *, videos: Path | None = None) -> LabelledSet:
    """Find and check every labelled video under ``root``; ``InvalidInput`` naming the first problem."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise InvalidInput(root, "labelled frames folder not found")
    files = _labels_files(root)
    if not files:
        raise InvalidInput(root, "no DeepLabCut CollectedData_*.h5/.csv files under this folder")
    project_config = _project_config(root)
    search = (
        [Path(videos)] if videos else [p for p in (project_config.parent / "videos",) if project_config] + [root.parent]
    )
    entries, scorers, bodyparts_seen = [], set(), None
    digest = hashlib.sha256()
    for labels_file in files:
        table = _read_labels(labels_file)
        scorers.update(table.columns.get_level_values("scorer"))
        bodyparts = list(dict.fromkeys(table.columns.get_level_values("bodyparts")))
        if bodyparts_seen is not None and bodyparts != bodyparts_seen:
            raise InvalidInput(labels_file, f"bodyparts {bodyparts} differ from {bodyparts_seen} of the other folders")
        bodyparts_seen = bodyparts
        video = probe_video(find_source_video(labels_file.parent.name, search))
        _check_frames(labels_file, table, video)
        digest.update(labels_file.relative_to(root).as_posix().encode() + sha256_file(labels_file).encode())
        for image in sorted(labels_file.parent.glob("*.png")):
            digest.update(image.name.encode() + sha256_file(image).encode())
        entries.append(LabelledVideo(labels_file.parent, labels_file, video, table))
    if len(scorers) != 1:
        raise InvalidInput(root, f"labels by several scorers {sorted(scorers)}", "a project has one scorer; merge them")
    rates = {v.video.fps for v in entries}
    sizes = {v.video.resolution for v in entries}
    if len(rates) > 1 or len(sizes) > 1:
        raise InvalidInput(
            root,
            f"source videos differ in frame rate {sorted(rates)} or resolution {sorted(sizes)}",
            "a model is trained for one frame rate and resolution: train one model per kind of video",
        )
    total = sum(len(v.labels) for v in entries)
    if total < MIN_FRAMES:
        raise InvalidInput(root, f"only {total} labelled frames; at least {MIN_FRAMES} are needed")
    (width, height), fps = sizes.pop(), rates.pop()
    return LabelledSet(
        root, scorers.pop(), bodyparts_seen, entries, fps, width, height, digest.hexdigest()[:16], project_config
    )


def _check_frames(labels_file: Path, table, video: VideoInfo) -> None:
    """Every labelled image exists, has the video's size, and every label lies inside it (or is missing)."""
    import cv2

    folder = labels_file.parent
    for index in table.index:
        name = index[-1] if isinstance(index, tuple) else Path(str(index)).name
        image_path = folder / name
        image = cv2.imread(str(image_path))
        if image is None:
            raise InvalidInput(image_path, f"labelled frame named in {labels_file.name} is missing or unreadable")
        if image.shape[:2] != (video.height, video.width):
            raise InvalidInput(
                image_path, f"frame is {image.shape[1]}x{image.shape[0]}, its video {video.width}x{video.height}"
            )
    xy = table.to_numpy(dtype=float).reshape(len(table), -1, 2)
    labelled = ~np.isnan(xy).any(axis=2)
    if not labelled.any():
        raise InvalidInput(labels_file, "no frame carries a label")
    x, y = xy[..., 0][labelled], xy[..., 1][labelled]
    if (x < 0).any() or (y < 0).any() or (x >= video.width).any() or (y >= video.height).any():
        raise InvalidInput(labels_file, f"labels outside the {video.width}x{video.height} frame")
