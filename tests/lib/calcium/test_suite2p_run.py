"""Registration metrics on a bounded sample: the same as suite2p's own below 5000 frames, 2000 frames above."""

import numpy as np
import pytest
from labpipe.calcium.settings import Suite2pSettings
from labpipe.calcium.suite2p_run import REGMETRICS_FRAMES, add_registration_metrics

suite2p = pytest.importorskip("suite2p")


def _plane(tmp_path, frames: int, size: int = 32):
    """A registered binary (drifting blobs plus noise) and the ops suite2p leaves beside it."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:size, :size]
    t = np.arange(frames)[:, None, None]
    movie = 200 + 80 * np.exp(-((yy - 16 - 3 * np.sin(t / 300)) ** 2 + (xx - 12) ** 2) / 20)
    movie = movie + rng.normal(0, 10, (frames, size, size))
    reg_file = tmp_path / "data.bin"
    movie.astype(np.int16).tofile(reg_file)
    registration = Suite2pSettings().suite2p(30.0, size, size)["registration"]
    registration["reg_metrics_rs"] = 0  # a fixed PCA seed, to compare exactly
    ops = {"Ly": size, "Lx": size, "reg_file": str(reg_file), "yrange": [1, size - 1], "xrange": [0, size], "run": {}}
    np.save(tmp_path / "ops.npy", ops)
    return tmp_path / "ops.npy", registration


def _suite2ps_own(ops_file, registration):
    ops = np.load(ops_file, allow_pickle=True).item()
    movie = suite2p.io.BinaryFile(Ly=ops["Ly"], Lx=ops["Lx"], filename=ops["reg_file"])
    try:
        return suite2p.registration.get_pc_metrics(movie, ops["yrange"], ops["xrange"], settings=registration)
    finally:
        movie.close()


@pytest.mark.parametrize("frames", [1600, 3100])
def test_metrics_are_suite2ps_below_5000_frames(tmp_path, frames):
    ops_file, registration = _plane(tmp_path, frames)
    add_registration_metrics(ops_file, registration)
    ops = np.load(ops_file, allow_pickle=True).item()
    tpc, regpc, regdx = _suite2ps_own(ops_file, registration)
    assert ops["regmetrics_frames"] == min(frames, REGMETRICS_FRAMES) and ops["run"]["do_regmetrics"] is True
    np.testing.assert_array_equal(ops["regPC"], regpc)
    np.testing.assert_array_equal(ops["regDX"], regdx)
    np.testing.assert_array_equal(ops["tPC"], tpc)


def test_metrics_sample_stays_2000_frames_on_long_recordings(tmp_path):
    ops_file, registration = _plane(tmp_path, 5200)
    add_registration_metrics(ops_file, registration)
    ops = np.load(ops_file, allow_pickle=True).item()
    assert ops["regmetrics_frames"] == REGMETRICS_FRAMES
    assert ops["tPC"].shape[0] == REGMETRICS_FRAMES  # suite2p's own takes 5000 frames here
    assert ops["regPC"].shape[2:] == (30, 32) and np.isfinite(ops["regDX"]).all()


def test_short_recordings_get_no_metrics_as_in_suite2p(tmp_path):
    ops_file, registration = _plane(tmp_path, 1000)
    add_registration_metrics(ops_file, registration)
    ops = np.load(ops_file, allow_pickle=True).item()
    assert "tPC" not in ops and "regmetrics_frames" not in ops
