"""A whole run in this process: cancellation, out-of-memory, the memory check, reruns, crash leftovers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from labpipe.errors import ConflictError
from labpipe.seg import tiles
from labpipe.seg.memory import OutOfMemory
from labpipe.seg.segment import SegmentationCancelled, SegmentationJob, clean_stale, segment_tomogram
from labpipe.seg.simulate import simulate_tomogram, write_simulated

pytestmark = pytest.mark.slow  # needs the session model


@pytest.fixture
def tomogram(seg_layout):
    path = seg_layout.tomograms / "run_test.mrc"
    if not path.exists():
        write_simulated(path, simulate_tomogram((36, 40, 48), voxel_size=20.0, seed=31), origin_xyz=(4.0, 8.0, 12.0))
    return path


def _job(tomogram, model, run, **extra) -> SegmentationJob:
    return SegmentationJob(tomogram, model.name, run=run, mirroring=False, preview_every=0, **extra)


def _nothing_left(layout, run):
    assert not (layout.artifacts / run).exists()
    assert not list(layout.artifacts.glob(f".{run}.*"))
    assert not list((layout.scratch / "seg").glob(f"{run}-*"))


def test_run_writes_artifacts_and_a_rerun_is_a_no_op(tiny_model, seg_layout, tomogram, monkeypatch):
    previews, phases = [], []
    job = _job(tomogram, tiny_model, "whole", preview_factor=4)
    job.preview_every = 1e-9  # a preview after every batch
    monkeypatch.setattr("labpipe.seg.tiles.MAX_BATCH", 2)  # this small tomogram has 8 windows: 4 batches
    result = segment_tomogram(job, seg_layout, on_preview=lambda p, image: previews.append(p), on_phase=phases.append)
    folder = seg_layout.artifacts / "whole"
    assert sorted(p.name for p in folder.iterdir()) == ["mask.mrc", "mask.nii.gz", "mask.nrrd", "stats.json"]
    assert phases == ["validating", "running", "previewing", "writing"]
    assert previews and all(p.factor == 4 for p in previews)
    assert [p.tiles_done for p in previews] == sorted(p.tiles_done for p in previews)
    stats = json.loads((folder / "stats.json").read_text())
    assert stats["tiles"] == result.tiles and stats["model"] == tiny_model.name
    again = segment_tomogram(_job(tomogram, tiny_model, "whole", preview_factor=4), seg_layout)
    assert again.skipped and again.stats == stats
    with pytest.raises(ConflictError, match="different step_size"):
        segment_tomogram(_job(tomogram, tiny_model, "whole", step_size=0.75), seg_layout)
    assert not list((seg_layout.scratch / "seg").glob("whole-*"))


def test_cancelling_leaves_nothing_in_the_artifact_folder(tiny_model, seg_layout, tomogram):
    predicted = []

    def stop() -> bool:
        return len(predicted) >= 3

    real = tiles.predict_tiles

    def counting(plan, starts, *args, **kwargs):
        predicted.extend(starts)
        return real(plan, starts, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("labpipe.seg.tiles.MAX_BATCH", 1)  # one window per call, so a stop can fall between windows
        patch.setattr("labpipe.seg.segment.predict_tiles", counting)
        with pytest.raises(SegmentationCancelled, match="cancelled after 3 of"):
            segment_tomogram(_job(tomogram, tiny_model, "cancelled"), seg_layout, should_stop=stop)
    assert len(predicted) == 3
    _nothing_left(seg_layout, "cancelled")


def test_gpu_out_of_memory_fails_with_a_hint(tiny_model, seg_layout, tomogram, monkeypatch):
    """No GPU here: the network raises torch's OutOfMemoryError as CUDA would (a stand-in for the device)."""
    predictor = tiles.load_predictor(tiny_model.folder, tuple(tiny_model.folds), "cpu", False, "")

    def exhausted(x):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(predictor, "_internal_maybe_mirror_and_predict", exhausted)
    with pytest.raises(OutOfMemory, match="out of memory predicting") as caught:
        segment_tomogram(_job(tomogram, tiny_model, "oom"), seg_layout)
    assert "fewer Dask workers" in caught.value.hint
    _nothing_left(seg_layout, "oom")


def test_memory_estimate_is_checked_before_any_window(tiny_model, seg_layout, tomogram, monkeypatch):
    called = []
    monkeypatch.setattr("labpipe.seg.segment.predict_tiles", lambda *a, **k: called.append(1))
    with pytest.raises(OutOfMemory, match=r"needs ~.* GiB \(1 worker\(s\)\) but 0.00 GiB is available"):
        segment_tomogram(_job(tomogram, tiny_model, "small"), seg_layout, available_memory=[1 << 20])
    assert called == []
    _nothing_left(seg_layout, "small")


def test_leftovers_of_a_killed_run_are_removed(seg_layout):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    work = seg_layout.scratch / "seg" / "killed-0123abcd"
    work.mkdir(parents=True)
    (work / "owner.json").write_text(json.dumps({"host": os.uname().nodename, "pid": pid, "run": "killed"}))
    np.save(work / "logit_sums.npy", np.zeros(10, np.float16))
    staged = seg_layout.artifacts / ".killed.x1y2.part"
    (staged / "killed").mkdir(parents=True)
    (staged / "killed" / "mask.mrc").write_bytes(b"half")
    alive = seg_layout.scratch / "seg" / "killed-live0000"
    alive.mkdir()
    (alive / "owner.json").write_text(json.dumps({"host": os.uname().nodename, "pid": os.getpid(), "run": "killed"}))
    removed = clean_stale(seg_layout, "killed")
    assert work in removed and not work.exists()
    assert alive.exists() and staged.exists()  # a live run of that name is staging right now
    alive.joinpath("owner.json").unlink()
    alive.rmdir()
    assert staged in clean_stale(seg_layout, "killed") and not staged.exists()


def test_workers_that_keep_dying_fail_the_run_instead_of_hanging(tiny_model, seg_layout, tomogram, monkeypatch):
    # distributed registers its config defaults on import: import it before dask.config.set, which would
    # otherwise delete the whole 'distributed' section on exit, failing every later LocalCluster with KeyError
    import dask
    import distributed  # noqa: F401
    from labpipe.compute import DaskSettings, dask_client
    from labpipe.errors import ToolError

    def dies(*args, **kwargs):  # defined here, so Dask ships it by value; it kills its worker process
        import os

        os._exit(1)

    monkeypatch.setattr("labpipe.seg.segment.predict_tiles", dies)
    started = time.monotonic()
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        dask_client(DaskSettings(n_workers=1)) as client,
        pytest.raises(ToolError, match="kept dying") as caught,
    ):
        segment_tomogram(_job(tomogram, tiny_model, "crash"), seg_layout, client=client)
    assert "fewer workers" in caught.value.hint
    assert time.monotonic() - started < 300
    _nothing_left(seg_layout, "crash")
