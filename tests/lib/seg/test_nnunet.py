"""nnU-Net datasets from MRC, nnU-Net's folders from the layout, model folders, job states."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from labpipe.errors import ConfigError, InvalidInput
from labpipe.layout import Layout
from labpipe.seg.jobs import JobState, job_state
from labpipe.seg.mrc import write_mrc
from labpipe.seg.nnunet import (
    NnunetPaths,
    TrainingCase,
    cases_from_images,
    load_model_info,
    nnunet_environment,
    prepare_dataset,
)
from labpipe.seg.simulate import LABELS, simulate_tomogram, write_simulated

RAW, EXT = "nnUNet_raw", "nnUNet_extTrainer"  # nnU-Net's own (mixed-case) variable names


@pytest.fixture
def cases(tmp_path):
    pairs = []
    for seed in (1, 2):
        image, labels = write_simulated(tmp_path / f"c{seed}.mrc", simulate_tomogram((24, 28, 32), seed=seed))
        pairs.append(TrainingCase(image, labels))
    return pairs


def test_dataset_reads_back_through_nnunets_reader_as_zyx(cases, tmp_path):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    paths = NnunetPaths.from_layout(Layout.default(tmp_path / "home"))
    dataset_id, folder = prepare_dataset(cases, LABELS, paths, "membranes")
    assert folder.name == f"Dataset{dataset_id:03d}_membranes" and dataset_id >= 500
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["labels"] == {"background": 0, "membrane": 1, "particle": 2}
    assert dataset["channel_names"] == {"0": "cryoET"} and dataset["numTraining"] == 2
    image, props = SimpleITKIO().read_images([str(folder / "imagesTr" / "tomo_000_0000.nii.gz")])
    import mrcfile

    assert np.array_equal(image[0], mrcfile.read(cases[0].image))
    assert tuple(props["spacing"]) == (20.0, 20.0, 20.0)
    seg, _ = SimpleITKIO().read_seg(str(folder / "labelsTr" / "tomo_000.nii.gz"))
    assert np.array_equal(seg[0], mrcfile.read(cases[0].labels))
    # the same name gets the same id again (rebuilt in place), another name the next free id
    assert prepare_dataset(cases, LABELS, paths, "membranes")[0] == dataset_id
    assert prepare_dataset(cases, LABELS, paths, "other")[0] == dataset_id + 1


def test_bad_training_data_is_named(cases, tmp_path):
    paths = NnunetPaths.from_layout(Layout.default(tmp_path / "home"))
    with pytest.raises(InvalidInput, match="at least 2 training cases"):
        prepare_dataset(cases[:1], LABELS, paths, "x")
    with pytest.raises(InvalidInput, match="consecutive labels"):
        prepare_dataset(cases, {0: "background", 2: "particle"}, paths, "x")
    wrong = write_mrc(tmp_path / "wrong_labels.mrc", np.zeros((24, 28, 30), np.int8), voxel_size_zyx=(20.0,) * 3)
    with pytest.raises(InvalidInput, match="differs from the tomogram") as caught:
        prepare_dataset([cases[0], TrainingCase(cases[1].image, wrong)], LABELS, paths, "x")
    assert str(wrong) in str(caught.value)
    stray = write_mrc(tmp_path / "stray.mrc", np.full((24, 28, 32), 7, np.int8), voxel_size_zyx=(20.0,) * 3)
    with pytest.raises(InvalidInput, match=r"label values \[7\]"):
        prepare_dataset([cases[0], TrainingCase(cases[1].image, stray)], LABELS, paths, "x")


def test_cases_pair_tomograms_with_their_labels(cases, tmp_path):
    found, names = cases_from_images([c.image for c in cases])
    assert [c.labels for c in found] == [c.labels for c in cases] and names == LABELS
    lonely = write_mrc(tmp_path / "lonely.mrc", np.zeros((4, 4, 4), np.float32), voxel_size_zyx=(1.0,) * 3)
    with pytest.raises(InvalidInput, match="lonely_labels.mrc"):
        cases_from_images([lonely])


def test_nnunet_folders_come_from_the_layout_not_the_shell(tmp_path, monkeypatch):
    monkeypatch.setenv(RAW, "/somewhere/the/user/set")
    layout = Layout.default(tmp_path / "home")
    paths = NnunetPaths.from_layout(layout)
    with nnunet_environment(paths) as env:
        assert os.environ[RAW] == str(layout.scratch / "nnunet" / "raw") == env[RAW]
        assert os.environ[EXT].endswith("seg/trainers")
        # nnU-Net's programs find the trainer in their own process, as here: in this one, nnU-Net's finder iterates
        # sys.modules while threads left by other tests import, and failed once with "dictionary changed size"
        find = "from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
        find += "print(f('nnUNetTrainerLabpipeShort').__name__)"
        found = subprocess.run([sys.executable, "-c", find], env=os.environ.copy(), capture_output=True, text=True)
        assert found.returncode == 0, found.stderr[-2000:]
        assert found.stdout.strip().splitlines()[-1] == "nnUNetTrainerLabpipeShort"
    assert os.environ[RAW] == "/somewhere/the/user/set"
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    bad = NnunetPaths(raw=blocked / "raw", preprocessed=blocked / "pp", results=blocked / "res")
    with pytest.raises(ConfigError, match="nnUNet_raw: cannot create") as caught:
        bad.environment()
    assert "StorageLayout block" in caught.value.hint


def test_a_missing_model_says_how_to_get_one(tmp_path):
    with pytest.raises(ConfigError, match="no segmentation model") as caught:
        load_model_info(Layout.default(tmp_path / "home"), "membranes")
    assert "labpipe seg train --name membranes" in caught.value.hint
    with pytest.raises(InvalidInput, match="model name contains a path separator"):
        load_model_info(Layout.default(tmp_path / "home"), "../etc")
    with pytest.raises(InvalidInput, match="not a usable model name"):
        load_model_info(Layout.default(tmp_path / "home"), "-rf")


@pytest.mark.parametrize(
    ("state_type", "name", "expected"),
    [
        ("SCHEDULED", "Scheduled", JobState.QUEUED),
        ("StateType.RUNNING", "Queued", JobState.QUEUED),
        ("RUNNING", "Running", JobState.RUNNING),
        ("RUNNING", "Previewing", JobState.PREVIEWING),
        ("COMPLETED", "Completed", JobState.COMPLETED),
        ("CRASHED", "Crashed", JobState.FAILED),
        ("CANCELLED", "Cancelled", JobState.CANCELLED),
    ],
)
def test_job_states(state_type, name, expected):
    assert job_state(state_type, name) is expected
