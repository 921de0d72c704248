"""The pose flows as real Prefect runs (test server, gpu concurrency limit), with the session's DeepLabCut model.

DeepLabCut runs on the CPU here; the ``gpu`` limit is the real global concurrency limit
``labpipe up`` creates (one slot per GPU, one on this GPU-less host).
"""

import uuid

import pytest
from labpipe.blocks import LabDatabase, StorageLayout
from labpipe.blocks.pose import PoseAnalysis
from labpipe.deployments.platform import ensure_gpu_limit
from labpipe.flows.pose import populate_pose, train_pose_model
from labpipe.ingest.run import ingest_share
from labpipe.layout import Layout
from labpipe.pose.populate import assign_model
from labpipe.pose.schema import tables
from prefect.client.orchestration import get_client

from tests.lib.pose.pose_model import MODEL, SETTINGS, VideoSpec, trained_model, write_pose_share

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # may train the session model (see test_population)


@pytest.fixture(scope="module")
def pose_model(labpipe_home):
    return trained_model(labpipe_home)


@pytest.fixture
def blocks(lab_db, tmp_path, labpipe_home):
    """Blocks pointing the flows at a temporary layout, the test database and the session's model registry."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    roots = Layout.default(tmp_path).model_dump()
    roots["blobs"] = lab_db.blobs
    roots["models"] = Layout.default(labpipe_home).models  # where the session model was published
    StorageLayout(**roots).save(name)
    LabDatabase(url=lab_db.target.url, schema_prefix=lab_db.prefix).save(name)
    PoseAnalysis(device="cpu", preview_frames=3).save(name)
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


def test_population_flow_fills_the_pose_table_and_leaves_a_summary_with_pictures(blocks, lab_db, pose_model):
    name, roots = blocks
    write_pose_share(roots.share, [VideoSpec("cam_a.mp4", seed=41), VideoSpec("cam_fast.mp4", seed=42, fps=50.0)])
    ingest_share(lab_db, roots.share)
    t = tables(lab_db)
    outcomes = assign_model(lab_db, pose_model.store, MODEL, roots.share)
    assert sorted(o["outcome"] for o in outcomes) == ["assigned", "refused"]  # the 50 fps copy
    fast = (t.ingest.PoseEstimationTask & {"file_name": "cam_fast.mp4"}).keys()[0]
    t.ingest.PoseEstimationTask.update1({**fast, "model_name": MODEL})  # set by hand: the worker still refuses
    result = populate_pose(analysis_block=name, layout_block=name, db_block=name, registry_block=None)
    assert result == {"analysed": 1, "errors": 1, "remaining": 1, "refused_at_preflight": 1}
    assert len(t.PoseEstimation()) == 1 and len(t.PoseEstimation.Bodypart()) == 2
    text = _artifact("pose-estimation-summary")
    assert "1 videos, 48 frames processed" in text and "mean likelihood" in text
    assert "Refused or failed (1)" in text and "frame rate 50 fps, the model was trained on 25 fps" in text
    assert "data:image/png;base64," in text
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("gpu").active_slots == 0  # released after the run


def test_training_flow_reuses_finished_work_and_publishes_the_same_model(blocks, pose_model):
    name, _ = blocks
    source = pose_model.source
    card = train_pose_model(
        labelled=str(source / "labeled-data"),
        videos=str(source / "videos"),
        name=MODEL,
        settings=SETTINGS.model_dump(),
        layout_block=name,
        db_block=name,
        registry_block=None,
        training_block=None,
    )
    assert card["model_id"] == pose_model.card.model_id  # same files, same id: publishing is idempotent
    assert (card["fps"], card["width"], card["height"]) == (25.0, 64, 64)
    text = _artifact(f"pose-train-{MODEL}")
    assert f"published as `{pose_model.card.model_id}`" in text and "network, evaluation" in text
    assert "| test |" in text
