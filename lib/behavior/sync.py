"""Align Bpod trials to imaging and camera frames through the sync signal a Harp board logs.

The rigs wire three TTLs into the Harp Behavior board's digital inputs: Bpod's trial-start
pulse, the microscope's frame clock and the behaviour camera's exposure trigger, so one
clock (Harp's) sees all three. Bpod's ``TrialStartTimestamp`` values are fitted to the
trial-start edges (offset and drift, least squares); a trial file that does not fit (another
session's, or a stream cut short) is refused naming the file, with the evidence.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from labpipe.behavior.bpod import BpodSession
from labpipe.behavior.harp import HarpStream
from labpipe.errors import InvalidInput
from pydantic import BaseModel, Field


class MisalignedFile(InvalidInput):
    """A behaviour file that does not belong with the recording it was filed under."""


class SyncWiring(BaseModel):
    """Which Harp digital input carries which TTL, and how strict the fit is."""

    trial_bit: int = Field(0, ge=0, le=7, description="DI carrying Bpod's trial-start pulse.")
    imaging_bit: int = Field(1, ge=0, le=7, description="DI carrying the microscope's frame clock.")
    camera_bit: int = Field(2, ge=0, le=7, description="DI carrying the behaviour camera's trigger.")
    max_residual_ms: float = Field(2.0, gt=0, description="Largest trial-start misfit accepted (ms).")
    max_drift: float = Field(1e-3, gt=0, description="Largest relative clock-rate difference accepted.")
    max_date_gap_days: int = Field(1, ge=0, description="Bpod's session date may differ from the folder's by this.")


@dataclass
class AlignedBehavior:
    """Trials, states and events on the Harp clock with the imaging and camera frame each falls in."""

    offset: float  # harp = drift * bpod + offset
    drift: float
    residual_ms: float
    imaging_frames: np.ndarray  # frame start times (harp clock, s)
    camera_frames: np.ndarray
    trials: list[dict]
    states: list[dict]
    events: list[dict]


def _frame_of(times: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Index of the frame each time falls in (-1 before the first frame or with no frames)."""
    if not len(frames):
        return np.full(np.shape(times), -1)
    index = np.searchsorted(frames, times, side="right") - 1
    return np.where(
        np.asarray(times) > frames[-1] + np.median(np.diff(frames)) if len(frames) > 1 else False, -1, index
    )


def check_identity(session: BpodSession, animal_id: str, session_date: dt.date, wiring: SyncWiring) -> None:
    """The trial file names the folder's animal and a date next to the session's; else ``MisalignedFile``."""
    if session.subject and session.subject != animal_id:
        raise MisalignedFile(
            session.path,
            f"Bpod subject {session.subject!r}, but the session is of {animal_id!r}",
            "this trial file belongs to another session; move it to its own session folder",
        )
    if session.started and abs((session.started.date() - session_date).days) > wiring.max_date_gap_days:
        raise MisalignedFile(
            session.path,
            f"recorded on {session.started.date()}, the session is of {session_date}",
            "this trial file belongs to another session; move it to its own session folder",
        )


def align(
    session: BpodSession, sync: HarpStream, wiring: SyncWiring, *, imaging_frames: int | None = None
) -> AlignedBehavior:
    """Fit Bpod's clock to Harp's on the trial starts and place every trial, state and event on the frames."""
    stream = sync.events()
    edges = stream.rising_edges(wiring.trial_bit)
    starts = session.trial_starts
    # Bpod saves a trial when it ends: a session stopped mid-trial has one trial-start pulse more than trials
    if not len(starts) or len(edges) not in (len(starts), len(starts) + 1):
        raise MisalignedFile(
            session.path,
            f"{len(starts)} trials, but the sync stream {sync.path.name} has {len(edges)} trial-start pulses",
            "the trial file and the sync stream are not of the "
            "same session; check which files were copied into this scan folder",
        )
    edges = edges[: len(starts)]
    if len(starts) >= 2:
        drift, offset = np.polyfit(starts, edges, 1)
    else:
        drift, offset = 1.0, float(edges[0] - starts[0])
    residual = float(np.abs(drift * starts + offset - edges).max() * 1000)
    if residual > wiring.max_residual_ms or abs(drift - 1) > wiring.max_drift:
        raise MisalignedFile(
            session.path,
            f"trial starts do not fit the sync pulses of {sync.path.name} "
            f"(worst misfit {residual:.1f} ms, clock ratio {drift:.6f})",
            "the trial file and the sync stream are not of the same session",
        )
    frames = stream.rising_edges(wiring.imaging_bit)
    camera = stream.rising_edges(wiring.camera_bit)
    if imaging_frames is not None and len(frames) and not imaging_frames <= len(frames) <= imaging_frames + 2:
        raise MisalignedFile(
            sync.path,
            f"{len(frames)} frame-clock pulses for a stack of {imaging_frames} frames",
            "the sync stream is not of this recording, or the stack is incomplete",
        )

    def place(bpod_times) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        harp = drift * np.asarray(bpod_times, np.float64) + offset
        return harp, _frame_of(harp, frames), _frame_of(harp, camera)

    trials, states, events = [], [], []
    for trial in session.trials:
        (t0, t1), (f0, f1), (c0, c1) = place([trial.start, trial.stop])
        trials.append(
            dict(
                trial_id=trial.number,
                trial_type=trial.trial_type if trial.trial_type is not None else -1,
                start_time=t0,
                stop_time=t1,
                start_frame=int(f0),
                stop_frame=int(f1),
                start_camera_frame=int(c0),
                stop_camera_frame=int(c1),
            )
        )
        for name, (s0, s1) in trial.states.items():
            if np.isnan(s0):
                continue  # a state not visited in this trial
            (h0, h1), (g0, g1), _ = place([trial.start + s0, trial.start + s1])
            states.append(
                dict(
                    trial_id=trial.number,
                    state=name,
                    start_time=h0,
                    stop_time=h1,
                    start_frame=int(g0),
                    stop_frame=int(g1),
                )
            )
        for number, (name, t) in enumerate(trial.events):
            (h,), (g,), (c,) = place([trial.start + t])
            events.append(
                dict(trial_id=trial.number, event_no=number, event=name, time=h, frame=int(g), camera_frame=int(c))
            )
    return AlignedBehavior(float(offset), float(drift), residual, frames, camera, trials, states, events)
