"""Checks run before any GPU time is spent on a pose-estimation task.

- the video opens and its first, middle and last frames decode (OpenCV, as DeepLabCut reads it);
- it is still the file ingest recorded (SHA-256), so a re-encoded or replaced copy is noticed;
- the model exists (the registry names it) and was trained on this frame rate and resolution
  (ADAMACS once analysed raw 25 fps and deinterlaced 50 fps copies of one recording with one
  model because an unsorted glob picked whichever came first);
- every output folder is writable, checked by really creating and removing a file there,
  because permission bits and ``os.access`` lie on CIFS mounts.

All problems are collected, so one failed preflight tells the whole story.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from labpipe.errors import InvalidInput, LabpipeError
from labpipe.files import sha256_file
from labpipe.pose.models import PoseModelCard, PoseModelStore
from labpipe.pose.video import VideoInfo, check_decodes

FPS_TOLERANCE = 1e-3  # relative: 25 vs 25.0 pass, 25 vs 50 or 29.97 vs 25 do not


@dataclass(frozen=True)
class PreflightProblem:
    check: str  # video | checksum | model | match | output
    subject: str
    problem: str
    hint: str = ""

    def __str__(self) -> str:
        return f"[{self.check}] {self.subject}: {self.problem}" + (f" ({self.hint})" if self.hint else "")


class PreflightError(InvalidInput):
    """A task failed its preflight; ``problems`` lists every check that failed."""

    def __init__(self, video: Path, problems: list[PreflightProblem]) -> None:
        self.problems = problems
        checks = sorted({p.check for p in problems})
        told = [str(p).replace(f"] {video}: ", "] ", 1) for p in problems]  # the video is named once, up front
        super().__init__(video, f"preflight failed ({', '.join(checks)}): " + "; ".join(told))

    @property
    def checks(self) -> set[str]:
        return {p.check for p in self.problems}

    def as_json(self) -> list[dict]:
        return [asdict(p) for p in self.problems]


def mismatch(video: VideoInfo, card: PoseModelCard) -> PreflightProblem | None:
    """Why ``card``'s model must not analyse ``video``, or None when frame rate and resolution match."""
    reasons = []
    if not math.isclose(video.fps, card.fps, rel_tol=FPS_TOLERANCE):
        reasons.append(f"frame rate {video.fps:g} fps, the model was trained on {card.fps:g} fps")
    if video.resolution != card.resolution:
        reasons.append(f"resolution {video.width}x{video.height}, the model was trained on {card.width}x{card.height}")
    if not reasons:
        return None
    return PreflightProblem(
        "match",
        video.path,
        f"refused for model {card.name or card.model_id} ({card.model_id}): " + " and ".join(reasons),
        "assign a model trained on videos like this one, or the matching copy of the recording",
    )


def check_writable(folder: Path) -> PreflightProblem | None:
    """Create, write, sync and remove a file in ``folder`` (creating the folder if needed)."""
    folder = Path(folder)
    probe = folder / f".labpipe-write-test-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"labpipe preflight\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as exc:
        return PreflightProblem(
            "output", str(folder), f"not writable: {exc.strerror or exc}", "fix the mount or rights"
        )
    return None


def preflight(
    video: Path,
    model_name: str | None,
    store: PoseModelStore,
    outputs: list[Path],
    *,
    expected_sha256: str | None = None,
) -> tuple[VideoInfo, PoseModelCard]:
    """Every check for one task; returns the video's facts and the model's card, or raises ``PreflightError``."""
    problems: list[PreflightProblem] = []
    info = card = None
    try:
        info = check_decodes(Path(video))
    except LabpipeError as exc:
        problems.append(PreflightProblem("video", exc.subject, exc.problem, exc.hint))
    if info is not None and expected_sha256 and sha256_file(video) != expected_sha256:
        problems.append(
            PreflightProblem(
                "checksum", str(video), "content differs from the file ingest recorded", "re-ingest the file"
            )
        )
    if not model_name:
        problems.append(PreflightProblem("model", str(video), "no model assigned to this task", "labpipe pose assign"))
    else:
        try:
            card = store.card(model_name)
        except LabpipeError as exc:
            problems.append(PreflightProblem("model", model_name, exc.problem, exc.hint or "labpipe models list"))
    if info is not None and card is not None and (problem := mismatch(info, card)) is not None:
        problems.append(problem)
    problems += [p for p in map(check_writable, outputs) if p is not None]
    if problems:
        raise PreflightError(Path(video), problems)
    return info, card
