"""Stimulus sets on disk (``labpipe.mei.stimuli``): stable ids, idempotent sets, damaged ones refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from labpipe.errors import ConflictError, InvalidInput
from labpipe.mei.neurons import pink_noise
from labpipe.mei.stimuli import read_stimulus_set, stimulus_id, write_stimulus_set


def test_stimulus_ids_are_stable_and_sets_idempotent(tmp_path):
    images = pink_noise(5, 16, seed=3)
    first = write_stimulus_set(tmp_path, images, kind="natural")
    again = write_stimulus_set(tmp_path, images.copy(), kind="natural")
    assert again.set_id == first.set_id and again.ids == first.ids == [stimulus_id(im, "natural") for im in images]
    assert all(i.startswith("NAT-") for i in first.ids) and len(set(first.ids)) == 5
    manifest = json.loads((first.folder / "manifest.json").read_text())
    assert [s["stimulus_id"] for s in manifest["stimuli"]] == first.ids
    assert all((first.folder / s["png"]).is_file() for s in manifest["stimuli"])
    other = write_stimulus_set(tmp_path, images[:4], kind="natural")
    assert other.set_id != first.set_id
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.set_id, other.set_id])  # nothing half-written


def test_damaged_or_duplicate_sets_are_refused(tmp_path):
    images = pink_noise(3, 16, seed=3)
    files = write_stimulus_set(tmp_path, images, kind="natural")
    np.save(files.folder / "stimuli.npy", images[::-1].copy())
    with pytest.raises(InvalidInput, match="does not match id"):
        read_stimulus_set(files.folder)
    with pytest.raises(ConflictError):
        write_stimulus_set(tmp_path, images, kind="natural")  # the folder now holds something else
    with pytest.raises(InvalidInput, match="same image twice"):
        write_stimulus_set(tmp_path / "x", np.stack([images[0], images[0]]), kind="mei")
    with pytest.raises(InvalidInput, match="manifest.json missing"):
        read_stimulus_set(tmp_path)
