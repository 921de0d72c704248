"""A training run killed mid-way publishes nothing, and the next run resumes from its checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from labpipe.mei.dataset import TrainingData
from labpipe.mei.neurons import pink_noise, simulate_population
from labpipe.mei.twin import TwinConfig
from labpipe.registry import FilesystemBackend, Registry

CONFIG = TwinConfig(channels=4, kernels=(5, 3, 3), epochs=30, batch_size=32)

TRAIN_THEN_PUBLISH = """
import sys, time
from pathlib import Path
from labpipe.mei.dataset import TrainingData
from labpipe.mei.training import train_member
from labpipe.mei.twin import TwinConfig
from labpipe.registry import FilesystemBackend, Registry

data = TrainingData.load(Path(sys.argv[1]))
config = TwinConfig(channels=4, kernels=(5, 3, 3), epochs=30, batch_size=32)
# a slow GPU host: each epoch takes a while, so the kill lands mid-run on any machine
folder, result, corr = train_member(data, config, 0, Path(sys.argv[2]), progress=lambda done, total: time.sleep(1))
Registry(FilesystemBackend(Path(sys.argv[3])), "lab", Path(sys.argv[4])).publish(folder, model_type="mei-twin")
"""


@pytest.fixture
def data(tmp_path):
    population = simulate_population("ANM-K1", 4, size=16, seed=2)
    images = pink_noise(400, 16, seed=1)
    ids = np.array([f"NAT-{i:012X}" for i in range(len(images))])
    return TrainingData(
        "ANM-K1",
        population.unit_ids,
        images,
        population.respond(images),
        ids,
        [{"session_id": "AAAAAAAA", "scan_id": "AAAAAAAA"}],
        "0123456789abcdef",
        16.0,
    )


def test_killed_training_publishes_nothing_and_resumes(data, tmp_path, lab_db):
    from labpipe.ingest.schema import tables as ingest_tables
    from labpipe.mei.schema import tables
    from labpipe.mei.training import publish_member, train_member

    data_path = data.save(tmp_path / "data.npz")
    checkpoints, store = tmp_path / "checkpoints", tmp_path / "store"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(TRAIN_THEN_PUBLISH))
    child = subprocess.Popen(
        [sys.executable, str(script), str(data_path), str(checkpoints), str(store), str(tmp_path / "cache-child")]
    )
    try:
        deadline = time.monotonic() + 300
        while not list(checkpoints.glob("*/last.pt")) and time.monotonic() < deadline:
            assert child.poll() is None, "training ended before it could be killed"
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)  # the worker dies mid-training
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
    registry = Registry(FilesystemBackend(store), "lab", tmp_path / "cache")
    assert registry.manifest().models == {}
    (last,) = checkpoints.glob("*/last.pt")
    killed_at = torch.load(last, weights_only=False)["epoch"]  # complete: checkpoints are renamed into place
    assert 1 <= killed_at < CONFIG.epochs

    folder, result, corr = train_member(TrainingData.load(data_path), CONFIG, 0, checkpoints)
    assert result.resumed_from_epoch >= killed_at and len(result.history) == CONFIG.epochs
    assert not list(checkpoints.glob("*/.*.part"))  # the staging of the interrupted write is cleaned up
    it = ingest_tables(lab_db)
    it.LabUser.insert1({"username": "alice"})
    it.Subject.insert1({"animal_id": "ANM-K1"})
    it.Session.insert1(
        dict(
            session_id="AAAAAAAA",
            username="alice",
            animal_id="ANM-K1",
            session_date="2026-03-02",
            initials="AB",
            folder="alice/x",
        )
    )
    it.Scan.insert1(dict(session_id="AAAAAAAA", scan_id="AAAAAAAA", folder="alice/x/scanAAAAAAAA"))
    t = tables(lab_db)
    t.StimulusSet.insert1(
        dict(
            set_id="natural-x",
            kind="natural",
            folder="/x",
            created="2026-03-02 00:00:00",
            n_stimuli=1,
            image_size=16,
            norm=16.0,
            images=np.zeros((1, 16, 16), np.float32),
        )
    )
    t.Unit.insert([{"animal_id": "ANM-K1", "unit_id": u} for u in data.unit_ids])
    t.ScanStimuli.insert1(
        dict(
            session_id="AAAAAAAA",
            scan_id="AAAAAAAA",
            stimulus_file="stimuli.json",
            n_trials=1,
            n_units=4,
            trial_stimuli=np.array(["x"]),
            responses=np.zeros((1, 4), np.float32),
            linked="2026-03-02 00:00:00",
        )
    )
    member = publish_member(lab_db, registry, data, CONFIG, 0, folder, result, corr, ensemble_id="e")
    assert list(registry.manifest().models) == [member.model_id]
    assert registry.manifest().aliases == {"mei-twin-ANM-K1": member.model_id}
    again = publish_member(lab_db, registry, data, CONFIG, 0, folder, result, corr, ensemble_id="e")
    assert again.model_id == member.model_id and len(t.Twin()) == 1  # publishing twice changes nothing
