"""The calcium and behaviour populations on a real database, against the simulator's truth.

One simulated share, two sessions: a good one (denoised, then suite2p, OASIS and the
CASCADE-style network, behaviour aligned) and one whose stack is truncated and whose Bpod
file belongs to another animal: both bad files get errors naming them, and block nothing else.
"""

import os
import shutil

import numpy as np
import pytest
from labpipe.behavior.schema import tables as behavior_tables
from labpipe.calcium import evaluate
from labpipe.calcium.populate import run_population
from labpipe.calcium.schema import CalciumContext, tables
from labpipe.calcium.settings import DenoiseSettings, SpikeSettings, Suite2pSettings
from labpipe.calcium.simulate import RecordingSpec
from labpipe.ingest.run import ingest_share
from labpipe.ingest.simulate_science import simulate_science_share

SPEC = RecordingSpec(frames=1500, height=64, width=64, cells=10, photons=8, rate_hz=0.6, seed=1)


@pytest.fixture
def science(lab_db, tmp_path):
    share = simulate_science_share(tmp_path / "share", 2, spec=SPEC, video=False)
    good, bad = share.scans
    bad_folder = share.root / bad.folder
    os.truncate(bad_folder / "imaging_00001.tif", os.path.getsize(bad_folder / "imaging_00001.tif") - 5000)
    (bad_folder / bad.bpod_file).unlink()
    shutil.copy(share.root / good.folder / good.bpod_file, bad_folder / good.bpod_file)  # another animal's trials
    assert ingest_share(lab_db, share.root).status == "succeeded"
    context = CalciumContext(
        share.root, tmp_path / "scratch", Suite2pSettings.small(), DenoiseSettings.small(), SpikeSettings.small()
    )
    return lab_db, share, context


@pytest.mark.slow
def test_every_population_fills_its_tables_and_bad_files_are_named(science):
    db, share, context = science
    good, bad = share.scans
    t = tables(db)
    good_key = {"session_id": good.folder.rsplit("scan", 1)[1], "file_name": "imaging_00001.tif"}
    t.DenoiseTask.insert1(dict(good_key, scan_id=good_key["session_id"]))

    denoised = run_population(db, "denoise", context)
    assert denoised.computed == {"ScanInfo": 1, "Denoising": 1}
    assert len(denoised.errors) == 1 and "truncated TIFF" in denoised.errors[0]["error"]
    assert bad.folder.rsplit("scan", 1)[1] in denoised.errors[0]["key"]["session_id"]
    # a folder: the blob store copies it file by file (a file would be read whole into the worker's memory)
    assert sorted((t.Denoising & good_key).fetch1("denoised").listdir()) == ["denoised.tif"]

    imaging = run_population(db, "imaging", context)
    assert imaging.errors == []  # the truncated stack stays failed in the jobs table until cleared
    assert imaging.remaining == {
        "ScanInfo": 1,
        "Processing": 0,
        "MotionCorrection": 0,
        "Segmentation": 0,
        "Fluorescence": 0,
        "Activity[oasis]": 0,
    }
    assert imaging.seconds.keys() == imaging.remaining.keys()  # where the time went, per table
    assert imaging.seconds["Processing"] >= (t.Processing & good_key).fetch1("duration_s") * 0.99  # suite2p is in it
    processing = (t.Processing & good_key).fetch1()
    assert processing["input"] == "denoised" and processing["settings"]["nonrigid"] is False
    assert sorted(processing["output"].listdir()) == [
        "F.npy",
        "Fneu.npy",
        "iscell.npy",
        "ops.npy",
        "spks.npy",
        "stat.npy",
    ]
    info = (t.ScanInfo & good_key).fetch1()
    assert (info["frames"], info["frame_rate"], info["zoom"]) == (1500, 30.0, 2.0)

    masks = (t.Segmentation.Mask & good_key & "is_cell").to_dicts()
    centres = np.array([[m["center_y"], m["center_x"]] for m in masks])
    mean_image = (t.MotionCorrection & good_key).fetch1("mean_image")
    reference = good.recording.footprints.sum(axis=0).A.reshape(64, 64)
    offset = evaluate.registration_offset(np.asarray(mean_image), reference)
    match = evaluate.match_rois(good.recording.centers, good.recording.active, centres, offset=offset)
    assert match.recall >= 0.7 and match.precision >= 0.8, match

    spikes = run_population(db, "spikes", context)
    assert spikes.computed == {"Activity[cascade]": 1} and spikes.errors == []
    by_method = {}
    for method in ("oasis", "cascade"):
        traces = {r["roi_id"]: r["activity"] for r in (t.Activity.Trace & good_key & {"method": method}).to_dicts()}
        rois = [masks[d]["roi_id"] for _, d in match.pairs]
        inferred = np.stack([np.asarray(traces[r]) for r in rois])
        by_method[method] = evaluate.rate_correlation(
            inferred, good.recording.spikes[[c for c, _ in match.pairs]], 30.0
        )
    assert by_method["oasis"] > 0.5 and by_method["cascade"] > 0.5, by_method

    behavior = run_population(db, "behavior", context)
    b = behavior_tables(db)
    assert behavior.computed == {"BehaviorSession": 1} and len(behavior.errors) == 1
    assert good.bpod_file in behavior.errors[0]["error"] and "another session" in behavior.errors[0]["error"]
    trials = (b.BehaviorSession.Trial & good_key).to_dicts(order_by="trial_id")
    truth_frames = np.searchsorted(good.behavior.imaging_frames_harp, good.behavior.trial_starts_harp, "right") - 1
    assert [tr["start_frame"] for tr in trials] == truth_frames.tolist()
    assert len(b.BehaviorSession.Event & good_key & "event = 'Port1In'") == len(good.behavior.lick_times_harp)
