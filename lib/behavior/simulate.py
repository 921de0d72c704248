"""Simulated behaviour files as the rigs write them: a Bpod SessionData .mat and Harp register streams.

A go/no-go licking task: each trial runs ITI -> Stimulus -> ResponseWindow -> Reward
(go, licked) or Punish (no-go, licked) or NoResponse, with Port1In/Port1Out licks and
Tup events. Bpod sends a trial-start TTL; the Harp Behavior board logs it on DI0, the
microscope's frame clock on DI1 and the camera trigger on DI2 (register 32, an event on
every change), and the valve openings Bonsai commands (register 34, writes). The Harp
clock runs from the board's power-up, with a small rate difference from Bpod's.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.behavior.harp import DIGITAL_INPUT_STATE, OUTPUT_SET, encode


@dataclass
class BehaviorTruth:
    trial_starts_harp: np.ndarray
    trial_types: np.ndarray
    lick_times_harp: np.ndarray
    imaging_frames_harp: np.ndarray
    camera_frames_harp: np.ndarray
    drift: float
    offset: float


def _trial(rng, trial_type: int) -> tuple[dict, dict, float]:
    """(States, Events, duration) of one trial, times from the trial start (s)."""
    iti = rng.uniform(1.0, 2.0)
    stimulus = (iti, iti + 0.5)
    response = (stimulus[1], stimulus[1] + 1.5)
    licks = np.sort(rng.uniform(*response, rng.integers(0, 5) if trial_type == 1 else rng.integers(0, 2)))
    licked = len(licks) > 0
    outcome_state = ("Reward" if trial_type == 1 else "Punish") if licked else "NoResponse"
    first = float(licks[0]) if licked else response[1]
    response = (response[0], first)
    outcome = (first, first + (0.1 if outcome_state == "Reward" else 1.0 if outcome_state == "Punish" else 0.0001))
    states = {
        "ITI": np.array([0.0, iti]),
        "Stimulus": np.array(stimulus),
        "ResponseWindow": np.array(response),
        "Reward": np.array([np.nan, np.nan]),
        "Punish": np.array([np.nan, np.nan]),
        "NoResponse": np.array([np.nan, np.nan]),
    }
    states[outcome_state] = np.array(outcome)
    events = {"Tup": np.array([iti, stimulus[1]])}
    if licked:
        events["Port1In"] = licks
        events["Port1Out"] = licks + 0.05
    return states, events, outcome[1]


def write_session(
    folder: Path,
    *,
    subject: str,
    started: dt.datetime,
    imaging_frames: int,
    frame_rate: float,
    camera_fps: float = 25.0,
    seed: int = 0,
    protocol: str = "GoNoGo",
) -> tuple[Path, Path, BehaviorTruth]:
    """Write ``<subject>_<protocol>_<date>_<time>.mat`` and ``harp/Behavior_32.bin`` (+ ``_34``) under ``folder``.

    Trials fill the imaging period; returns the two paths and the truth on the Harp clock.
    """
    import scipy.io

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "harp").mkdir(parents=True, exist_ok=True)
    drift, offset = 1 + rng.uniform(-3e-5, 3e-5), rng.uniform(500, 5000)  # Harp clock: seconds since power-up
    imaging_start_bpod = 2.0
    duration = imaging_frames / frame_rate
    trials, starts, stops, types, licks = [], [], [], [], []
    t = imaging_start_bpod + 0.5
    while True:
        trial_type = int(rng.integers(1, 3))  # 1 go, 2 no-go
        states, events, length = _trial(rng, trial_type)
        if t + length > imaging_start_bpod + duration - 0.5:
            break
        trials.append({"States": states, "Events": events})
        starts.append(t)
        stops.append(t + length)
        types.append(trial_type)
        licks.extend(t + events.get("Port1In", np.array([])))
        t += length + rng.uniform(0.01, 0.05)
    n = len(trials)
    raw = np.empty((n,), dtype=object)
    raw[:] = trials
    session_data = {
        "Info": {
            "BpodSoftwareVersion": "2.0",
            "StateMachineVersion": "Bpod 2.5 r1",
            "SessionDate": started.strftime("%d-%b-%Y"),
            "SessionStartTime_UTC": started.strftime("%H:%M:%S"),
            "SessionStartTime_MATLAB": 0.0,
        },
        "nTrials": n,
        "RawEvents": {"Trial": raw},
        "TrialStartTimestamp": np.array(starts),
        "TrialEndTimestamp": np.array(stops),
        "TrialTypes": np.array(types, dtype=np.float64),
        "SettingsFile": {"GUI": {"RewardAmount": 3.0}},
    }
    mat = folder / f"{subject}_{protocol}_{started:%Y%m%d_%H%M%S}.mat"
    scipy.io.savemat(mat, {"SessionData": session_data}, long_field_names=True, do_compression=True)

    def harp(bpod_time):
        return drift * np.asarray(bpod_time, np.float64) + offset

    frames = harp(imaging_start_bpod + np.arange(imaging_frames) / frame_rate)
    camera = harp(imaging_start_bpod - 0.5 + np.arange(int((duration + 1) * camera_fps)) / camera_fps)
    trial_edges = harp(np.array(starts)) + rng.normal(0, 5e-5, n)
    changes = []  # (time, bit, level)
    for bit, times, width in ((0, trial_edges, 0.01), (1, frames, 0.5 / frame_rate), (2, camera, 0.002)):
        changes += [(x, bit, 1) for x in times] + [(x + width, bit, 0) for x in times]
    changes.sort()
    state = 0
    with open(folder / "harp" / f"Behavior_{DIGITAL_INPUT_STATE}.bin", "wb") as stream:
        for when, bit, level in changes:
            state = state | (1 << bit) if level else state & ~(1 << bit)
            stream.write(encode(3, DIGITAL_INPUT_STATE, 0x01, when, [state]))
    with open(folder / "harp" / f"Behavior_{OUTPUT_SET}.bin", "wb") as stream:
        for trial_start, trial, kind in zip(starts, trials, types, strict=True):
            reward = trial["States"]["Reward"]
            if kind == 1 and not np.isnan(reward[0]):
                stream.write(encode(2, OUTPUT_SET, 0x02, harp(trial_start + reward[0]), [1]))
    truth = BehaviorTruth(harp(np.array(starts)), np.array(types), harp(np.array(licks)), frames, camera, drift, offset)
    return mat, folder / "harp" / f"Behavior_{DIGITAL_INPUT_STATE}.bin", truth
