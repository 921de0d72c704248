"""Bpod session files: the ``SessionData`` struct Bpod saves as a MATLAB .mat file after each trial.

``SessionData.RawEvents.Trial{i}.States.<name> = [start stop]`` (NaN for states not
visited) and ``.Events.<name> = [times]``, in seconds from the trial's start;
``TrialStartTimestamp(i)`` / ``TrialEndTimestamp(i)`` on the state machine's clock;
``Info`` with the session's date and start time; ``nTrials``; optional ``TrialTypes``.
Bpod names the file ``<subject>_<protocol>_<YYYYMMDD>_<HHMMSS>.mat``.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput

FILE_NAME = re.compile(r"(?P<subject>.+)_(?P<protocol>[^_]+)_(?P<date>\d{8})_(?P<time>\d{6})\.mat$")


@dataclass
class BpodTrial:
    number: int  # 1-based, as Bpod counts
    start: float  # TrialStartTimestamp, state machine clock (s)
    stop: float
    trial_type: int | None
    states: dict[str, tuple[float, float]] = field(default_factory=dict)  # relative to the trial start
    events: list[tuple[str, float]] = field(default_factory=list)  # (name, time relative to the trial start)


@dataclass
class BpodSession:
    path: Path
    subject: str
    protocol: str
    started: dt.datetime | None
    trials: list[BpodTrial]

    @property
    def trial_starts(self) -> np.ndarray:
        return np.array([t.start for t in self.trials], np.float64)


def _as_list(value) -> list:
    if isinstance(value, np.ndarray):
        return value.ravel().tolist() if value.dtype != object else list(value.ravel())
    return list(value) if isinstance(value, list | tuple) else [value]


def _times(value) -> list[float]:
    return [float(v) for v in np.atleast_1d(np.asarray(value, np.float64)).ravel()]


def _started(info: dict, name_match) -> dt.datetime | None:
    date_text, time_text = info.get("SessionDate"), info.get("SessionStartTime_UTC")
    try:
        if date_text and time_text:
            return dt.datetime.strptime(f"{date_text} {time_text}", "%d-%b-%Y %H:%M:%S")
    except ValueError:
        pass
    if name_match:
        return dt.datetime.strptime(name_match["date"] + name_match["time"], "%Y%m%d%H%M%S")
    return None


def read_session(path: Path) -> BpodSession:
    """The trials of a Bpod .mat file; ``InvalidInput`` naming the file and the field that is wrong."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path, simplify_cells=True)
    except Exception as exc:
        raise InvalidInput(path, f"not a readable MATLAB file: {exc}", "copy it again from the behaviour PC") from exc
    data = mat.get("SessionData")
    if not isinstance(data, dict):
        raise InvalidInput(path, "no SessionData struct", "is this a Bpod session file?")
    try:
        n_trials = int(data["nTrials"])
        raw_trials = _as_list(data["RawEvents"]["Trial"]) if n_trials else []
        starts = _times(data["TrialStartTimestamp"]) if n_trials else []
        stops = _times(data["TrialEndTimestamp"]) if n_trials else []
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(path, f"SessionData lacks {exc}", "is this a Bpod session file?") from exc
    if not (len(raw_trials) == len(starts) == len(stops) == n_trials):
        raise InvalidInput(
            path,
            f"nTrials={n_trials} but {len(raw_trials)} RawEvents trials, {len(starts)} start "
            f"and {len(stops)} end timestamps",
            "the file was saved mid-trial; re-export it",
        )
    types = _as_list(data.get("TrialTypes", [None] * n_trials))
    trials = []
    for i, raw in enumerate(raw_trials):
        states = {
            name: (float(v[0]), float(v[-1]))
            for name, value in (raw.get("States") or {}).items()
            for v in [np.atleast_2d(np.asarray(value, np.float64))[0]]
        }
        events = sorted(
            ((name, t) for name, value in (raw.get("Events") or {}).items() for t in _times(value)),
            key=lambda item: item[1],
        )
        trial_type = int(types[i]) if i < len(types) and types[i] is not None else None
        trials.append(BpodTrial(i + 1, starts[i], stops[i], trial_type, states, events))
    match = FILE_NAME.search(path.name)
    info = data.get("Info") or {}
    subject = match["subject"] if match else str(info.get("Subject", ""))
    protocol = match["protocol"] if match else str(info.get("Protocol", ""))
    return BpodSession(path, subject, protocol, _started(info, match), trials)
