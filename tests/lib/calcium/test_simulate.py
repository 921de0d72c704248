"""The simulator's stacks carry what its truth says: cells' dF/F, motion, shot noise, CASCADE noise levels."""

import numpy as np
import tifffile
from labpipe.calcium.simulate import (
    Recording,
    RecordingSpec,
    RecordingTruth,
    noise_level,
    noisy_dff,
    write_recording,
)


def test_cell_pixels_follow_the_true_dff_and_noise_is_poisson(tmp_path):
    spec = RecordingSpec(frames=300, height=48, width=48, cells=4, max_shift=0, photons=50, neuropil=0.0, seed=2)
    truth = write_recording(tmp_path / "rec.tif", spec)
    stack = tifffile.imread(tmp_path / "rec.tif").astype(np.float64) - spec.offset
    cell = int(np.argmax(truth.spikes.sum(axis=1)))
    weights = truth.footprints[cell].toarray().reshape(48, 48)
    core = weights > 0.8 * weights.max()
    trace = stack[:, core].mean(axis=1)
    assert np.corrcoef(trace, truth.dff[cell])[0, 1] > 0.9
    clean = Recording(spec).clean_frames(0, 300)
    residual = stack - clean
    assert abs(residual.var() / clean.mean() - 1) < 0.1  # shot noise: variance equals the mean
    saved = RecordingTruth.load(truth.save(tmp_path / "truth.npz"))
    assert (saved.footprints != truth.footprints).nnz == 0 and (saved.spikes == truth.spikes).all()


def test_motion_moves_the_field_by_the_true_shifts(tmp_path):
    from skimage.registration import phase_cross_correlation

    recording = Recording(RecordingSpec(frames=300, height=64, width=64, cells=6, max_shift=5, seed=4))
    shifts = recording.shifts
    assert np.abs(shifts).max() >= 2
    rest = int(np.flatnonzero((shifts == 0).all(axis=1))[0])
    reference = recording.clean_frames(rest, rest + 1)[0]
    for index in np.flatnonzero(np.abs(shifts).sum(axis=1) >= 2)[:5]:
        frame = recording.clean_frames(index, index + 1)[0]
        found, _, _ = phase_cross_correlation(frame, reference, normalization=None)
        assert tuple(found) == tuple(shifts[index])


def test_noise_levels_are_cascades_standardised_ones():
    rng = np.random.default_rng(0)
    for rate in (7.5, 30.0):
        for nu in (1.0, 4.0, 8.0):
            measured = noise_level(noisy_dff(rng, np.zeros((20, 5000), np.float32), rate, nu), rate)
            assert abs(np.median(measured) / nu - 1) < 0.05
