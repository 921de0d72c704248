"""The MEI loop as real Prefect runs: one full turn on 20 simulated neurons, measured against ground truth.

The turn is trained once per module (2,000 natural images, a two-member ensemble,
10 epochs) and shared by the tests below; the second round after the simulated
bench2p1 recording is short (it checks that the new scans are used, not quality).
"""

from __future__ import annotations

import datetime as dt
import uuid

import numpy as np
import pytest
from labpipe.blocks import LabDatabase, StorageLayout
from labpipe.blocks.registry import ModelStore, model_registry
from labpipe.flows.training import mei_loop, train_twin
from labpipe.layout import Layout
from labpipe.mei.stimuli import stimulus_folder

pytestmark = pytest.mark.slow
ANIMAL, SEED = "ANM-3001", 0
DAY = dt.date(2026, 3, 2)


@pytest.fixture(scope="module")
def lab(embedded_target, tmp_path_factory):
    """Blocks pointing the flows at a temporary layout, a fresh schema prefix and a file-system model store."""
    from labpipe.db.connect import LabDatabase as Database

    root = tmp_path_factory.mktemp("mei-lab")
    db = Database(embedded_target, root / "blobs", prefix=f"t{uuid.uuid4().hex[:10]}")
    name = f"t-{uuid.uuid4().hex[:8]}"
    roots = Layout.default(root).model_dump()
    roots["blobs"] = db.blobs
    StorageLayout(**roots).save(name)
    LabDatabase(url=embedded_target.url, schema_prefix=db.prefix).save(name)
    ModelStore(room="lab-mice", root=root / "registry", cache_dir=root / "cache").save(name)
    yield name, Layout(**roots).ensure(), db
    db.drop_all()


def _ingest(name):
    from labpipe.flows.ingest import ingest

    summary = ingest(min_age_s=0, layout_block=name, db_block=name)  # simulated recordings are complete
    assert summary["status"] == "succeeded"


@pytest.fixture(scope="module")
def first_turn(lab):
    from labpipe.mei.simulate import start_lab

    name, layout, db = lab
    sim = start_lab(db, stimulus_folder(layout), layout.staging, animal_id=ANIMAL, seed=SEED, date=DAY)
    _ingest(name)
    result = mei_loop(
        ANIMAL,
        epochs=10,
        ensemble=2,
        seeds=2,
        steps=100,
        use_dask=True,
        simulated_seed=SEED,
        store_block=name,
        layout_block=name,
        db_block=name,
    )
    return sim, result


def test_the_twins_predict_the_true_neurons(first_turn):
    _, result = first_turn
    trained = result["trained"]
    assert result["linked"]["linked"] == 1 and trained["trials"] == 2000
    assert np.median(trained["truth_corr"]) >= 0.9 and min(trained["truth_corr"]) >= 0.8
    assert all(r >= 0.5 for r in trained["heldout_corr_median"])  # single noisy trials cap this lower


def test_the_meis_meet_the_quality_targets(first_turn):
    _, result = first_turn
    quality = result["meis"]["quality"]
    print("MEI quality against ground truth:", quality, "twin truth r:", result["trained"]["truth_corr"])
    assert quality["units"] == 20
    assert quality["mei_filter_corr_median"] >= 0.85
    assert quality["mei_filter_corr_min"] >= 0.75
    assert quality["fraction_of_optimum_median"] >= 0.8
    assert quality["mei_over_best_natural_median"] > 2  # far beyond anything a natural-like image drives


def test_the_models_are_in_the_registry_and_the_database(first_turn, lab):
    from labpipe.mei.schema import tables

    name, layout, db = lab
    _, result = first_turn
    registry = model_registry(name)
    models = registry.list(model_type="mei-twin", tags=[ANIMAL])
    assert sorted(m.id for m in models) == sorted(result["trained"]["models"])
    assert registry.manifest().aliases[f"mei-twin-{ANIMAL}"] == result["trained"]["models"][0]
    assert all(m.training.epochs == 10 and m.training.dataset_hash == result["trained"]["dataset_hash"] for m in models)
    t = tables(db)
    assert len(t.Twin & {"animal_id": ANIMAL}) == 2 and len(t.Twin.UnitFit()) == 40
    assert result["meis"]["generators"] == result["trained"]["models"]  # a two-member ensemble generates and scores
    candidates = t.MeiRun.Candidate & {"mei_run": result["meis"]["mei_run"]}
    assert len(candidates) == 40 and len(candidates & "chosen") == 20


def test_the_stimulus_set_is_on_the_rig_with_stable_ids(first_turn, lab):
    from labpipe.mei.loop import chosen_meis
    from labpipe.mei.schema import tables
    from labpipe.mei.stimuli import read_stimulus_set, stimulus_id

    name, layout, db = lab
    _, result = first_turn
    folder = stimulus_folder(layout) / result["meis"]["set_id"]
    files = read_stimulus_set(folder)
    assert files.kind == "mei" and len(files.ids) == 20
    chosen = chosen_meis(db, result["meis"]["mei_run"])
    assert files.ids == [stimulus_id(r["image"], "mei") for r in chosen]
    assert {r["unit_id"] for r in files.records} == {f"u{i:03d}" for i in range(20)}
    assert len(tables(db).MeiStimulus & [{"stimulus_id": s} for s in files.ids]) == 20


def test_the_loop_closes_through_a_bench2p1_recording(first_turn, lab):
    from labpipe.mei.schema import as_array, tables
    from labpipe.mei.simulate import record_meis

    name, layout, db = lab
    sim, result = first_turn
    mei_folder = stimulus_folder(layout) / result["meis"]["set_id"]
    recording = record_meis(
        layout.staging,
        sim.population,
        mei_folder,
        sim.natural,
        mei_repeats=5,
        natural_images=300,
        date=DAY + dt.timedelta(days=1),
    )
    _ingest(name)
    second = train_twin(ANIMAL, epochs=1, ensemble=1, store_block=name, layout_block=name, db_block=name)
    t = tables(db)
    scan_id = recording.scan_folder.split("scan")[-1]
    assert (t.ingest.Scan & {"scan_id": scan_id}).fetch1("setup") == "bench2p1"
    # the new scan is linked to the MEIs it showed ...
    shown_meis = t.ScanStimuli.Shown * t.MeiStimulus & {"scan_id": scan_id}
    assert len(shown_meis) == 20 and set(shown_meis.to_arrays("repeats")) == {5}
    # ... the true neurons answered them far more than natural images ...
    scan = (t.ScanStimuli & {"scan_id": scan_id}).fetch1()
    trials = np.array([str(s) for s in as_array(scan["trial_stimuli"])])
    responses = as_array(scan["responses"])
    is_mei = np.char.startswith(trials, "MEI-")
    assert responses[is_mei].mean() > 3 * responses[~is_mei].mean()
    # ... and the next round trained on it
    assert second["trials"] == 2000 + 100 + 300
    model_id = second["models"][0]
    assert len(t.Twin.TrainedOn & {"model_id": model_id}) == 2
    assert len(t.Twin.TrainedOn & {"model_id": model_id, "scan_id": scan_id}) == 1
    assert model_registry(name).resolve(f"mei-twin-{ANIMAL}").id == model_id  # the alias moved to the new twin
