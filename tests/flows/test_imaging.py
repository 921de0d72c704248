"""The calcium-imaging, behaviour and PyRAT flows as real Prefect runs (test server, gpu concurrency limit).

One simulated share, two sessions: a good one (denoised, suite2p, OASIS and the CASCADE-style
network, behaviour aligned) and one with a truncated stack and another session's Bpod file. The
flows run with small settings from saved blocks; the bad files are named in the run's result and
summary artifact, and block nothing else. PyRAT is a cloud service that cannot run here: the flow
reads a loopback stand-in of its documented endpoints (tests/lib/records/standins.py) with the real client.
"""

import os
import shutil
import uuid

import pytest
from labpipe.behavior.schema import tables as behavior_tables
from labpipe.blocks import LabDatabase, StorageLayout
from labpipe.blocks.imaging import PyratConnection, SpikeInference, StackDenoising, Suite2pProcessing
from labpipe.calcium.schema import tables
from labpipe.calcium.settings import DenoiseSettings, SpikeSettings, Suite2pSettings
from labpipe.calcium.simulate import RecordingSpec
from labpipe.deployments.platform import ensure_gpu_limit
from labpipe.flows.imaging import populate_behavior, populate_calcium, sync_subject_records
from labpipe.ingest.run import ingest_share
from labpipe.ingest.simulate_science import simulate_science_share
from labpipe.layout import Layout
from labpipe.records.schema import tables as record_tables
from prefect.client.orchestration import get_client

from tests.lib.records.standins import CLIENT_TOKEN, USER_TOKEN, free_port, pyrat_app, serve
from tests.lib.records.test_pyrat import _animal

SPEC = RecordingSpec(frames=1500, height=64, width=64, cells=10, photons=8, rate_hz=0.6, seed=1)


@pytest.fixture
def blocks(lab_db, tmp_path):
    """Blocks pointing the flows at a temporary layout, the test database and small (CPU) settings."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    roots = Layout.default(tmp_path).model_dump()
    roots["blobs"] = lab_db.blobs
    StorageLayout(**roots).save(name)
    LabDatabase(url=lab_db.target.url, schema_prefix=lab_db.prefix).save(name)
    Suite2pProcessing(**Suite2pSettings.small().model_dump()).save(name)
    StackDenoising(**DenoiseSettings.small().model_dump()).save(name)
    SpikeInference(**SpikeSettings.small().model_dump()).save(name)
    with get_client(sync_client=True) as client:
        ensure_gpu_limit(client, 0)
    return name, Layout(**roots).ensure()


def _artifact(key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), sort=ArtifactSort.CREATED_DESC, limit=1
        )
    return found[0].data if found else ""


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_populations_run_as_flows_and_bad_files_are_named_not_blocking(blocks, lab_db):
    name, roots = blocks
    share = simulate_science_share(roots.share, 2, spec=SPEC, video=False)
    good, bad = share.scans
    bad_folder = roots.share / bad.folder
    os.truncate(bad_folder / "imaging_00001.tif", os.path.getsize(bad_folder / "imaging_00001.tif") - 5000)
    (bad_folder / bad.bpod_file).unlink()
    shutil.copy(roots.share / good.folder / good.bpod_file, bad_folder / good.bpod_file)  # another session's trials
    assert ingest_share(lab_db, roots.share).status == "succeeded"
    t = tables(lab_db)
    good_id = good.folder.rsplit("scan", 1)[1]
    good_key = {"session_id": good_id, "scan_id": good_id, "file_name": "imaging_00001.tif"}
    t.DenoiseTask.insert1(good_key)
    blocks_of = dict(suite2p_block=name, denoise_block=name, spikes_block=name, layout_block=name, db_block=name)

    denoised = populate_calcium(population="denoise", **blocks_of)
    assert denoised["computed"] == {"ScanInfo": 1, "Denoising": 1}
    assert len(denoised["errors"]) == 1 and "truncated TIFF" in denoised["errors"][0]["error"]
    assert "truncated TIFF" in _artifact("calcium-denoise") and "imaging_00001.tif" in _artifact("calcium-denoise")

    imaging = populate_calcium(population="imaging", **blocks_of)
    assert imaging["remaining"] == {"ScanInfo": 1, "Processing": 0, "MotionCorrection": 0, "Segmentation": 0,
                                    "Fluorescence": 0, "Activity[oasis]": 0}  # fmt: skip
    assert (t.Processing & good_key).fetch1("input") == "denoised"
    assert (t.Processing & good_key).fetch1("settings")["nonrigid"] is False  # the block's settings ran
    assert len(t.Segmentation.Mask & good_key & "is_cell") >= 5
    summary = _artifact("calcium-imaging")  # the stack's picture: mean image with ROIs, cells' dF/F and spikes
    assert f"![{good_id} imaging_00001.tif: ROIs and activity](data:image/png;base64," in summary

    spikes = populate_calcium(population="spikes", **blocks_of)
    assert spikes["computed"] == {"Activity[cascade]": 1} and spikes["errors"] == []
    assert len(t.Activity.Trace & good_key & {"method": "cascade"}) == len(t.Fluorescence.Trace & good_key)
    assert "data:image/png;base64," in _artifact("calcium-spikes")

    behavior = populate_behavior(layout_block=name, db_block=name)
    assert behavior["computed"] == {"BehaviorSession": 1} and len(behavior["errors"]) == 1
    assert good.bpod_file in behavior["errors"][0]["error"] and "another session" in behavior["errors"][0]["error"]
    assert len(behavior_tables(lab_db).BehaviorSession.Trial & good_key) == len(good.behavior.trial_starts_harp)
    assert "another session" in _artifact("calcium-behavior")
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("gpu").active_slots == 0  # released after the runs


def test_pyrat_sync_flow_fills_subjects_and_an_outage_fails_only_its_own_run(lab_db, tmp_path):
    name = f"t-{uuid.uuid4().hex[:8]}"
    roots = Layout.default(tmp_path).model_dump()
    roots["blobs"] = lab_db.blobs
    StorageLayout(**roots).save(name)
    LabDatabase(url=lab_db.target.url, schema_prefix=lab_db.prefix).save(name)
    with serve(pyrat_app([_animal(i) for i in range(5)])) as url:
        PyratConnection(url=f"{url}/pyrat", client_token=CLIENT_TOKEN, user_token=USER_TOKEN, page_size=2).save(name)
        result = sync_subject_records(pyrat_block=name, layout_block=name, db_block=name)
    assert (result["configured"], result["animals"], result["inserted"]) == (True, 5, 5)
    assert len(record_tables(lab_db).Animal()) == 5 and "5 animals (5 new" in _artifact("subject-records")

    down = f"http://127.0.0.1:{free_port()}/pyrat"  # nothing listens there
    PyratConnection(url=down, client_token=CLIENT_TOKEN, user_token=USER_TOKEN, timeout_s=2).save(name, overwrite=True)
    state = sync_subject_records(pyrat_block=name, layout_block=name, db_block=name, return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="PyRAT http://127.0.0.1.*unreachable"):
        state.result()
    assert len(record_tables(lab_db).Animal()) == 5  # nothing half-written

    assert sync_subject_records(pyrat_block="default", layout_block=name, db_block=name) == {"configured": False}
