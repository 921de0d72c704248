"""The segment flow on the session's Prefect server: Dask workers, job states, previews, cancellation.

Windows run on a real Dask LocalCluster (CPU workers: this host has no GPU);
the result is compared with nnU-Net's own predictor on the same model.
"""

from __future__ import annotations

import threading
import time

import mrcfile
import numpy as np
import pytest
import torch
from labpipe.deployments.platform import ensure_gpu_limit
from labpipe.flows.segment import segment
from labpipe.layout import Layout
from labpipe.seg.simulate import simulate_tomogram, write_simulated
from labpipe.seg.tiles import initialize_predictor
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterName
from prefect.states import Cancelling

from tests.lib.seg.seg_model import trained_tiny_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(labpipe_home):
    model = trained_tiny_model(labpipe_home)
    roots = Layout.default(labpipe_home).ensure()
    with get_client(sync_client=True) as client:
        ensure_gpu_limit(client, 0)
    return model, roots


def _artifacts(key: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))


def _flow_run(name: str):
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
        return runs[0] if runs else None


def test_flow_over_two_dask_workers_equals_nnunet(setup):
    model, roots = setup
    path, _ = write_simulated(
        roots.tomograms / "flow_a.mrc", simulate_tomogram((36, 44, 56), seed=41), origin_xyz=(3.0, 5.0, 7.0)
    )
    state = segment(
        tomogram="flow_a.mrc",
        model=model.name,
        run="flow-a",
        mirroring=False,
        workers=2,
        preview_every=0.5,
        preview_factor=4,
        return_state=True,
    )
    assert state.is_completed(), state
    result = state.result()
    assert result["tiles"] > 4
    mask = mrcfile.read(roots.artifacts / "flow-a" / "mask.mrc").astype(np.uint8)

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=False, device=torch.device("cpu"), allow_tqdm=False)
    initialize_predictor(predictor, model.folder, ("all",))
    reference = predictor.predict_single_npy_array(
        mrcfile.read(path).astype(np.float32)[None], {"spacing": [20.0, 20.0, 20.0]}
    )
    assert float((reference == mask).mean()) >= 0.999
    assert result["stats"]["workers"] == 2

    flow_run = _flow_run("segment-flow-a-" + model.name)
    with get_client(sync_client=True) as client:
        names = [s.name for s in client.read_flow_run_states(flow_run.id)]
    # Prefect's Running first, then the job states: waiting for a gpu slot, running, previewing, done
    assert names[names.index("Queued") :] == ["Queued", "Running", "Previewing", "Completed"], names
    previews = _artifacts("segment-preview-flow-a")
    assert previews and previews[0].type == "image"
    assert str(previews[0].data).startswith("data:image/png;base64,")
    summary = _artifacts("segment-summary")
    assert any("mask.nrrd" in str(a.data) for a in summary)


def test_cancelling_the_run_stops_it_and_leaves_no_artifacts(setup):
    model, roots = setup
    write_simulated(roots.tomograms / "flow_b.mrc", simulate_tomogram((64, 64, 80), seed=42))
    outcome = {}

    def run():
        outcome["state"] = segment(
            tomogram="flow_b.mrc",
            model=model.name,
            run="flow-b",
            mirroring=True,
            workers=1,
            preview_every=0.5,
            return_state=True,
        )

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 600
    flow_run = None
    while time.monotonic() < deadline:
        flow_run = _flow_run("segment-flow-b-" + model.name)
        if flow_run and flow_run.state.name == "Previewing":
            break
        time.sleep(0.5)
    assert flow_run is not None and flow_run.state.name == "Previewing", "the run never started previewing"
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
    asked = time.monotonic()
    thread.join(300)
    stopped_after = time.monotonic() - asked
    assert not thread.is_alive()
    assert outcome["state"].is_cancelled(), outcome["state"]
    assert stopped_after < 60, f"took {stopped_after:.0f} s to stop"
    assert not (roots.artifacts / "flow-b").exists()
    assert not list(roots.artifacts.glob(".flow-b.*"))
    assert not list((roots.scratch / "seg").glob("flow-b-*"))
