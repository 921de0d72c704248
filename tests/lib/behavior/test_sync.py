"""Bpod trials placed on the imaging and camera frames through the Harp sync stream, against the simulator's truth."""

import datetime as dt

import numpy as np
import pytest
from labpipe.behavior.bpod import read_session
from labpipe.behavior.harp import read_stream
from labpipe.behavior.simulate import write_session
from labpipe.behavior.sync import MisalignedFile, SyncWiring, align, check_identity

STARTED = dt.datetime(2026, 2, 10, 14, 3, 12)


def _session(folder, seed=0, frames=1800, subject="ANM-2100"):
    return write_session(folder, subject=subject, started=STARTED, imaging_frames=frames, frame_rate=30.0, seed=seed)


def test_trials_and_events_land_on_the_right_frames(tmp_path):
    mat, sync, truth = _session(tmp_path)
    aligned = align(read_session(mat), read_stream(sync), SyncWiring(), imaging_frames=1800)
    starts = np.array([t["start_time"] for t in aligned.trials])
    assert np.abs(starts - truth.trial_starts_harp).max() < 2e-4  # seconds
    assert abs(aligned.drift - truth.drift) < 1e-5 and aligned.residual_ms < 0.5
    expected = np.searchsorted(truth.imaging_frames_harp, truth.trial_starts_harp, side="right") - 1
    assert [t["start_frame"] for t in aligned.trials] == expected.tolist()
    lick_frames = [e["camera_frame"] for e in aligned.events if e["event"] == "Port1In"]
    truth_frames = np.searchsorted(truth.camera_frames_harp, truth.lick_times_harp, side="right") - 1
    assert np.abs(np.array(lick_frames) - truth_frames).max() <= 1  # within one camera frame (40 ms)


def test_a_trial_file_from_another_session_is_refused_naming_it(tmp_path):
    mat, _, _ = _session(tmp_path / "a", seed=1)
    _, sync, _ = _session(tmp_path / "b", seed=2)  # same animal and day, another recording
    with pytest.raises(MisalignedFile, match=mat.name) as caught:
        align(read_session(mat), read_stream(sync), SyncWiring())
    assert "not of the same session" in str(caught.value)


def test_the_wrong_animal_or_day_is_refused_before_alignment(tmp_path):
    mat, _, _ = _session(tmp_path, subject="ANM-2999")
    with pytest.raises(MisalignedFile, match="Bpod subject 'ANM-2999', but the session is of 'ANM-2100'"):
        check_identity(read_session(mat), "ANM-2100", STARTED.date(), SyncWiring())
    mat, _, _ = _session(tmp_path / "other")
    with pytest.raises(MisalignedFile, match="recorded on 2026-02-10, the session is of 2026-03-01"):
        check_identity(read_session(mat), "ANM-2100", dt.date(2026, 3, 1), SyncWiring())


def test_a_sync_stream_of_another_stack_length_is_refused(tmp_path):
    mat, sync, _ = _session(tmp_path)
    with pytest.raises(MisalignedFile, match="1800 frame-clock pulses for a stack of 2400 frames"):
        align(read_session(mat), read_stream(sync), SyncWiring(), imaging_frames=2400)
