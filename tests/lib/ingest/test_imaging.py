"""Imaging processing recovers what the simulator put in: shifts, cell positions and activity."""

import numpy as np
import pytest
import tifffile
from labpipe.errors import InvalidInput
from labpipe.ingest import imaging
from labpipe.ingest.simulate import imaging_stack


@pytest.mark.parametrize("seed", range(8))
def test_motion_correction_recovers_the_applied_shifts(seed):
    stack, truth = imaging_stack(np.random.default_rng(seed))
    shifts = imaging.estimate_shifts(stack.astype(np.float32))
    residual = shifts + truth.shifts  # the correction undoes the motion, up to a constant offset
    residual -= residual.mean(axis=0)
    assert np.sqrt((residual**2).mean()) < 0.2  # pixels
    assert np.abs(residual).max() < 0.6


@pytest.mark.parametrize("seed", range(8))
def test_rois_match_the_active_cells_and_their_traces(seed):
    stack, truth = imaging_stack(np.random.default_rng(seed))
    stack = stack.astype(np.float32)
    shifts = imaging.estimate_shifts(stack)
    offset = (shifts + truth.shifts).mean(axis=0)
    result = imaging.segment(imaging.apply_shifts(stack, shifts))
    active = [i for i in range(len(truth.centers)) if truth.activity[i].max() > 0]
    assert len(result.centers) == len(active)
    for i in active:
        distances = np.hypot(*(result.centers - (truth.centers[i] + offset)).T)
        match = int(np.argmin(distances))
        assert distances[match] < 1.0
        assert np.corrcoef(result.dff[match], truth.activity[i])[0, 1] > 0.9


def test_projections_and_row(tmp_path):
    stack, _ = imaging_stack(np.random.default_rng(0), frames=16, size=32, cells=2)
    result = imaging.motion_correct(stack.astype(np.float32))
    row = result.row()
    assert row["n_frames"] == 16 and row["mean_image"].shape == (32, 32)
    assert (row["max_image"] >= row["mean_image"] - 1e-3).all()


def test_unreadable_and_wrong_shaped_tiffs_are_named(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"not a tiff")
    with pytest.raises(InvalidInput, match="broken.tif: not a readable TIFF"):
        imaging.read_stack(bad)
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, np.zeros((8, 8), dtype=np.uint16))
    with pytest.raises(InvalidInput, match="expected a \\(frames, height, width\\) stack"):
        imaging.read_stack(flat)
