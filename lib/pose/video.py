"""What a video is (frame rate, resolution, frame count) and whether it decodes, read the way DeepLabCut reads it.

DeepLabCut reads videos with OpenCV, so OpenCV is what is asked here: a file that
OpenCV cannot open or decode would fail inside ``analyze_videos`` after the GPU was taken.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")


@dataclass(frozen=True)
class VideoInfo:
    """A video as OpenCV sees it. ``frames`` is the container's count (may be approximate for some codecs)."""

    path: str
    fps: float
    width: int
    height: int
    frames: int
    codec: str

    @property
    def resolution(self) -> tuple[int, int]:
        return self.width, self.height

    def as_json(self) -> dict:
        return asdict(self)


def _capture(path: Path):
    import cv2

    if not path.is_file():
        raise InvalidInput(path, "video file not found", "check the task's file and the share root")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise InvalidInput(path, "video cannot be opened (not a video, or a codec OpenCV lacks)", "re-encode it")
    return capture


def probe_video(path: Path) -> VideoInfo:
    """Frame rate, resolution, frame count and codec of ``path``; ``InvalidInput`` if it does not open."""
    import cv2

    path = Path(path)
    capture = _capture(path)
    try:
        fourcc = int(capture.get(cv2.CAP_PROP_FOURCC))
        info = VideoInfo(
            path=str(path),
            fps=round(float(capture.get(cv2.CAP_PROP_FPS)), 3),
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            frames=int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
            codec="".join(chr((fourcc >> 8 * i) & 0xFF) for i in range(4)).strip("\x00 "),
        )
    finally:
        capture.release()
    if info.fps <= 0 or info.width <= 0 or info.height <= 0 or info.frames <= 0:
        raise InvalidInput(path, f"video reports no usable frame rate, size or length ({info})", "re-encode it")
    return info


def check_decodes(path: Path, info: VideoInfo | None = None) -> VideoInfo:
    """Decode the first, middle and last frames (a truncated file fails here, not on the GPU)."""
    info = info or probe_video(path)
    wanted = sorted({0, info.frames // 2, max(info.frames - 1, 0)})
    frames = read_frames(Path(path), wanted)
    for index, frame in zip(wanted, frames, strict=True):
        if frame.shape[:2] != (info.height, info.width):
            raise InvalidInput(
                path, f"frame {index} decodes as {frame.shape[1]}x{frame.shape[0]}, header says {info.resolution}"
            )
    return info


def read_frames(path: Path, indices: Iterable[int]) -> list[np.ndarray]:
    """RGB frames at ``indices`` (read in order); ``InvalidInput`` naming the first frame that does not decode."""
    import cv2

    path = Path(path)
    wanted = sorted({int(i) for i in indices})
    capture = _capture(path)
    frames: dict[int, np.ndarray] = {}
    try:
        position = 0
        for index in wanted:
            if index != position:
                capture.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = capture.read()
            if not ok or frame is None:
                raise InvalidInput(path, f"frame {index} does not decode", "the file may be truncated; re-copy it")
            frames[index] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            position = index + 1
    finally:
        capture.release()
    return [frames[int(i)] for i in indices]
