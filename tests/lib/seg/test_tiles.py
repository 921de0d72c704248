"""Tiled prediction equals nnU-Net's own sliding window; previews are aligned, integer-downsampled labels.

Uses the session's tiny model (real nnU-Net training on simulated data).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from labpipe.errors import ConfigError, InvalidInput
from labpipe.seg.mrc import open_volume, validate_tomogram, write_mrc
from labpipe.seg.nnunet import TRAINER_DIR, trainer_class
from labpipe.seg.simulate import simulate_tomogram, write_simulated
from labpipe.seg.tiles import (
    LogitAccumulator,
    initialize_predictor,
    plan_tiles,
    predict_tile,
    predict_tiles,
    windows_per_task,
)

pytestmark = pytest.mark.slow  # the session model is trained by the first test that needs it


def _nnunet_prediction(model, path: Path, mirroring: bool) -> np.ndarray:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(
        tile_step_size=0.5, use_mirroring=mirroring, device=torch.device("cpu"), allow_tqdm=False
    )
    initialize_predictor(predictor, model.folder, tuple(model.folds))
    info = validate_tomogram(path)
    with open_volume(path) as data:
        image = np.asarray(data, dtype=np.float32)[None]
    return predictor.predict_single_npy_array(image, {"spacing": list(info.voxel_size_zyx)})


def _tiled_prediction(model, path: Path, work: Path, mirroring: bool) -> tuple[np.ndarray, LogitAccumulator]:
    info = validate_tomogram(path)
    plan = plan_tiles(path, info, model, mirroring=mirroring)
    accumulator = LogitAccumulator(work, plan)
    # windows arrive out of order, as they do from Dask workers
    order = list(range(len(plan.starts)))
    np.random.default_rng(0).shuffle(order)
    for index in order:
        accumulator.offer(index, predict_tile(plan, plan.starts[index], "cpu", 1))
    labels = np.zeros(info.shape_zyx, np.uint8)
    return accumulator.write_labels(labels), accumulator


def test_tiles_equal_nnunet_sliding_window_with_cropping_and_padding(tiny_model, tmp_path):
    sim = simulate_tomogram((40, 30, 56), voxel_size=20.0, seed=21)
    sim.volume[:4] = 0  # nnU-Net crops the zero slabs; Y (30) is smaller than the patch (32): nnU-Net pads
    sim.volume[:, :, -6:] = 0
    path, _ = write_simulated(tmp_path / "t.mrc", sim)
    tiled, accumulator = _tiled_prediction(tiny_model, path, tmp_path / "work", mirroring=False)
    assert accumulator.plan.bbox == ((4, 40), (0, 30), (0, 50))
    assert accumulator.plan.padded_shape == (36, 32, 50)
    reference = _nnunet_prediction(tiny_model, path, mirroring=False)
    assert reference.shape == tiled.shape
    agreement = float((reference == tiled).mean())
    assert agreement >= 0.999, agreement
    assert (tiled[:4] == 0).all() and (tiled[:, :, -6:] == 0).all()


@pytest.mark.parametrize("mirroring", [False, True])
def test_a_batch_of_windows_gives_each_window_its_own_logits(tiny_model, tmp_path, mirroring):
    path, _ = write_simulated(tmp_path / "b.mrc", simulate_tomogram((48, 48, 48), voxel_size=20.0, seed=23))
    plan = plan_tiles(path, validate_tomogram(path), tiny_model, mirroring=mirroring)
    starts = list(plan.starts[:5])
    batched = predict_tiles(plan, starts, "cpu", 1)
    alone = np.stack([predict_tile(plan, start, "cpu", 1) for start in starts])
    assert batched.shape == (5, plan.num_classes, *plan.patch_size)
    np.testing.assert_allclose(batched, alone, rtol=1e-4, atol=1e-4 * float(np.abs(alone).max()))
    assert windows_per_task((32, 32, 32)) == 16 and windows_per_task((128, 128, 128)) == 1


def test_tiles_equal_nnunet_with_test_time_mirroring(tiny_model, tmp_path):
    path, _ = write_simulated(tmp_path / "m.mrc", simulate_tomogram((32, 32, 40), voxel_size=20.0, seed=22))
    tiled, _ = _tiled_prediction(tiny_model, path, tmp_path / "work", mirroring=True)
    reference = _nnunet_prediction(tiny_model, path, mirroring=True)
    assert float((reference == tiled).mean()) >= 0.999


@pytest.mark.parametrize("factor", [4, 8])
def test_previews_are_the_labels_of_every_fth_voxel(tiny_model, tmp_path, factor):
    path, _ = write_simulated(tmp_path / "p.mrc", simulate_tomogram((36, 44, 52), voxel_size=20.0, seed=23))
    info = validate_tomogram(path)
    plan = plan_tiles(path, info, tiny_model, mirroring=False)
    accumulator = LogitAccumulator(tmp_path / "work", plan)
    half = len(plan.starts) // 2
    for index in range(half):
        accumulator.offer(index, predict_tile(plan, plan.starts[index], "cpu", 1))
    partial, pending = accumulator.labels_at(factor)
    assert partial.shape == tuple(-(-n // factor) for n in info.shape_zyx)
    assert pending.any() and not pending.all()
    for index in range(half, len(plan.starts)):
        accumulator.offer(index, predict_tile(plan, plan.starts[index], "cpu", 1))
    final = accumulator.write_labels(np.zeros(info.shape_zyx, np.uint8))
    preview, pending = accumulator.labels_at(factor)
    assert not pending.any()
    assert np.array_equal(preview, final[::factor, ::factor, ::factor])


def test_voxel_size_far_from_the_models_is_refused(tiny_model, tmp_path):
    path = write_mrc(tmp_path / "v.mrc", np.ones((40, 40, 40), np.float32), voxel_size_zyx=(10.0, 10.0, 10.0))
    with pytest.raises(InvalidInput, match="nnU-Net would resample") as caught:
        plan_tiles(path, validate_tomogram(path), tiny_model)
    assert "binvol" in str(caught.value)


NNUNET_OWN = """
import json, sys, torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
p = nnUNetPredictor(use_mirroring=True, device=torch.device("cpu"), allow_tqdm=False)
p.initialize_from_trained_model_folder(sys.argv[1], use_folds=tuple(sys.argv[2:]))
weights = p.network.state_dict()
print(json.dumps({"trainer": p.trainer_name, "mirror": list(p.allowed_mirroring_axes or []),
    "network": type(p.network).__name__, "configuration": p.configuration_manager.configuration_name if hasattr(
    p.configuration_manager, "configuration_name") else "", "weights": {k: float(v.double().sum()) for k, v in
    weights.items()}, "sets": len(p.list_of_parameters)}))
"""


def test_the_predictor_is_initialised_as_nnunet_initialises_it(tiny_model):
    # nnU-Net's own method, in its own process (in this one its finder races other tests' threads on sys.modules)
    own = subprocess.run(
        [sys.executable, "-c", NNUNET_OWN, tiny_model.folder, *tiny_model.folds],
        env={**os.environ, "nnUNet_extTrainer": str(TRAINER_DIR)},
        capture_output=True,
        text=True,
    )
    assert own.returncode == 0, own.stderr[-2000:]
    theirs = json.loads(own.stdout.strip().splitlines()[-1])
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(use_mirroring=True, device=torch.device("cpu"), allow_tqdm=False)
    initialize_predictor(predictor, tiny_model.folder, tuple(tiny_model.folds))
    weights = predictor.network.state_dict()
    assert predictor.trainer_name == theirs["trainer"] == tiny_model.trainer
    assert list(predictor.allowed_mirroring_axes or []) == theirs["mirror"]
    assert type(predictor.network).__name__ == theirs["network"]
    assert len(predictor.list_of_parameters) == theirs["sets"]
    assert {k: float(v.double().sum()) for k, v in weights.items()} == pytest.approx(theirs["weights"])


def test_trainers_are_found_in_nnunet_labpipe_and_a_labs_folder(tmp_path):
    assert trainer_class("nnUNetTrainer").__module__ == "nnunetv2.training.nnUNetTrainer.nnUNetTrainer"
    assert trainer_class("nnUNetTrainerLabpipeShort").__module__ == "labpipe.seg.trainers.labpipe_trainers"
    (tmp_path / "ours.py").write_text(
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
        "class nnUNetTrainerOurs(nnUNetTrainer):\n    pass\n"
    )
    assert trainer_class("nnUNetTrainerOurs", tmp_path).__name__ == "nnUNetTrainerOurs"
    with pytest.raises(ConfigError, match="nnUNetTrainerNowhere: no nnU-Net trainer of this name") as caught:
        trainer_class("nnUNetTrainerNowhere", tmp_path)
    assert str(tmp_path) in caught.value.problem
