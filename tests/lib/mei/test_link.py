"""Recordings through ingest, linked to their stimuli (``labpipe.mei.link``), and the training data they give."""

from __future__ import annotations

import datetime as dt
import json
import os

import numpy as np
import pytest
from labpipe.errors import InvalidInput
from labpipe.ingest.consolidate import consolidate
from labpipe.ingest.run import ingest_share
from labpipe.mei.bench import RESPONSES_FILE, STIMULI_FILE, record_session
from labpipe.mei.dataset import training_data
from labpipe.mei.link import link_scans
from labpipe.mei.neurons import pink_noise, simulate_population
from labpipe.mei.schema import as_array, tables
from labpipe.mei.stimuli import register_stimulus_set, write_stimulus_set

DAY = dt.date(2026, 3, 2)


@pytest.fixture(scope="module")
def population():
    return simulate_population("ANM-3001", 6, size=16, seed=1)


def _ingest(db, layout_root):
    share, staging = layout_root / "share", layout_root / "staging"
    consolidate(staging, share, min_age_s=0)  # simulated recordings are complete when written
    report = ingest_share(db, share, today=dt.date(2026, 12, 31))
    assert report.status == "succeeded", report.failures
    return share


def test_recordings_are_linked_and_bad_ones_reported_not_blocking(lab_db, tmp_path, population):
    stimuli = tmp_path / "stimuli" / "bench2p1"
    natural = write_stimulus_set(stimuli, pink_noise(200, 16, seed=5), kind="natural")
    assert register_stimulus_set(lab_db, natural) and not register_stimulus_set(lab_db, natural)
    staging = tmp_path / "staging"
    good = record_session(staging, population, [(natural, 1, None)], date=DAY, seed=1)
    partial = record_session(staging, population, [(natural, 2, 50)], date=DAY, seed=2, units=population.unit_ids[:4])
    unregistered = write_stimulus_set(stimuli, pink_noise(3, 16, seed=6), kind="natural")
    unknown = record_session(staging, population, [(unregistered, 1, None)], date=DAY, seed=3)
    tampered = record_session(staging, population, [(natural, 1, 20)], date=DAY, seed=4)
    share = _ingest(lab_db, tmp_path)
    responses = share / "alice" / tampered.scan_folder / RESPONSES_FILE
    os.chmod(responses, 0o644)
    np.save(responses, np.zeros((20, 6), np.float32))

    report = link_scans(lab_db, share)
    t = tables(lab_db)
    assert sorted(r["trials"] for r in report.linked) == sorted([good.n_trials, partial.n_trials])
    reasons = {f["scan"].split("/")[-2]: f["reason"] for f in report.failed}
    assert "not in the database" in reasons[unknown.scan_folder.split("/")[0]]
    assert "changed since it was ingested" in reasons[tampered.scan_folder.split("/")[0]]
    assert len(t.LinkFailure()) == 2

    scan = (t.ScanStimuli & {"scan_id": good.scan_folder.split("scan")[-1]}).fetch1()
    assert [str(s) for s in as_array(scan["trial_stimuli"])] == good.stimulus_ids
    assert as_array(scan["responses"]).shape == (good.n_trials, 6)
    shown = t.ScanStimuli.Shown & {"scan_id": partial.scan_folder.split("scan")[-1]}
    assert len(shown) == 50 and set(shown.to_arrays("repeats")) == {2}
    assert len(t.ScanStimuli.Recorded & {"scan_id": partial.scan_folder.split("scan")[-1]}) == 4

    # the unknown stimuli get registered: the next run links that scan and forgets its failure
    register_stimulus_set(lab_db, unregistered)
    again = link_scans(lab_db, share)
    assert len(again.linked) == 1 and again.already == 2 and len(t.LinkFailure()) == 1

    data = training_data(lab_db, population.animal_id)
    assert data.unit_ids == population.unit_ids
    assert data.images.shape == (good.n_trials + partial.n_trials + 3, 16, 16)
    assert np.isnan(data.responses[:, 4:]).sum() == 2 * partial.n_trials  # units the partial scan did not record
    # trials are the images shown: the responses line up with the simulated neurons' rates
    rates = population.rates(data.images)
    ok = ~np.isnan(data.responses[:, 0])
    assert np.corrcoef(rates[ok, 0], data.responses[ok, 0])[0, 1] > 0.5
    held = data.heldout
    assert 0.03 < held.mean() < 0.25
    assert not set(data.stimulus_ids[held]) & set(data.stimulus_ids[~held])  # split by stimulus, no leak
    assert training_data(lab_db, population.animal_id).dataset_hash == data.dataset_hash
    with pytest.raises(InvalidInput, match="no linked scans"):
        training_data(lab_db, "ANM-0000")


def test_a_stimuli_manifest_with_bad_content_is_named(tmp_path, population):
    from labpipe.mei.link import read_scan_stimuli

    natural = write_stimulus_set(tmp_path / "s", pink_noise(4, 16, seed=5), kind="natural")
    rec = record_session(tmp_path / "staging", population, [(natural, 1, None)], date=DAY)
    scan = tmp_path / "staging" / "bench2p1" / "alice" / rec.scan_folder
    everything = set(natural.ids).__and__
    manifest = json.loads((scan / STIMULI_FILE).read_text())
    assert read_scan_stimuli(scan, {}, everything)["responses"].shape == (4, 6)
    for change, message in [
        ({"format": "other/2"}, "format 'other/2'"),
        ({"trials": []}, "non-empty list of stimulus ids"),
        ({"units": ["u000", "u000"]}, "distinct unit ids"),
        ({"units": ["bad unit", "u001", "u002", "u003", "u004", "u005"]}, "unit ids"),
        ({"units": ["u000"]}, "expected (trials, units) = (4, 1)"),
    ]:
        (scan / STIMULI_FILE).write_text(json.dumps({**manifest, **change}))
        with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace(")", r"\)")):
            read_scan_stimuli(scan, {}, everything)
