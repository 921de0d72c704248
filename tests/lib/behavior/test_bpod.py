"""Bpod SessionData files, written as Bpod does (scipy.io.savemat), read back into trials."""

import datetime as dt

import numpy as np
import pytest
import scipy.io
from labpipe.behavior.bpod import read_session
from labpipe.behavior.simulate import write_session
from labpipe.errors import InvalidInput


def test_trials_states_and_events_come_back_as_bpod_wrote_them(tmp_path):
    started = dt.datetime(2026, 2, 10, 14, 3, 12)
    mat, _, truth = write_session(tmp_path, subject="ANM-2100", started=started, imaging_frames=900, frame_rate=30.0)
    assert mat.name == "ANM-2100_GoNoGo_20260210_140312.mat"
    session = read_session(mat)
    assert (session.subject, session.protocol, session.started) == ("ANM-2100", "GoNoGo", started)
    assert [t.trial_type for t in session.trials] == truth.trial_types.tolist()
    raw = scipy.io.loadmat(mat, simplify_cells=True)["SessionData"]
    assert len(session.trials) == raw["nTrials"] > 3
    first = session.trials[0]
    assert first.states["ITI"][0] == 0.0 and first.states["Stimulus"][0] == first.states["ITI"][1]
    visited = [s for s in ("Reward", "Punish", "NoResponse") if not np.isnan(first.states[s][0])]
    assert len(visited) == 1  # the other outcome states are NaN, as Bpod records states not visited
    licks = [t for t in session.trials for name, _ in t.events if name == "Port1In"]
    assert len(licks) == len(truth.lick_times_harp)


def test_a_file_that_is_not_a_bpod_session_is_named(tmp_path):
    other = tmp_path / "notes.mat"
    scipy.io.savemat(other, {"x": np.arange(3)})
    with pytest.raises(InvalidInput, match="notes.mat: no SessionData struct"):
        read_session(other)
    broken = tmp_path / "ANM_GoNoGo_20260210_140312.mat"
    broken.write_bytes(b"MATLAB 5.0 truncated")
    with pytest.raises(InvalidInput, match="not a readable MATLAB file"):
        read_session(broken)
