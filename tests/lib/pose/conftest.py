"""Pose fixtures: the session's trained model, and an ingested share of marker videos with known positions."""

from __future__ import annotations

import pytest
from labpipe.ingest.run import ingest_share
from labpipe.layout import Layout
from labpipe.pose.populate import assign_model
from labpipe.pose.schema import PoseContext
from labpipe.pose.settings import PoseAnalysisSettings

from tests.lib.pose.pose_model import MODEL, VideoSpec, trained_model, write_pose_share


@pytest.fixture(scope="session")
def pose_model(labpipe_home):
    """A small DeepLabCut model trained once per session on simulated markers, published to the registry."""
    return trained_model(labpipe_home)


@pytest.fixture
def pose_share(lab_db, pose_model, tmp_path, labpipe_home):
    """Ingested share: two videos like the training video, one at 50 fps, one at 128x128; model assigned."""
    share = tmp_path / "share"
    truths = write_pose_share(
        share,
        [
            VideoSpec("cam_a.mp4", seed=11),
            VideoSpec("cam_b.mp4", seed=12),
            VideoSpec("cam_deinterlaced.mp4", seed=13, fps=50.0),
            VideoSpec("cam_big.mp4", seed=14, size=128),
        ],
    )
    ingest_share(lab_db, share)
    # worker processes find the blob store under their LABPIPE_HOME, as deployed workers do
    blobs = Layout.default(labpipe_home).blobs
    blobs.mkdir(parents=True, exist_ok=True)
    lab_db.instance.config.stores["blobs"]["location"] = str(blobs)
    outcomes = assign_model(lab_db, pose_model.store, MODEL, share)
    return lab_db, share, truths, outcomes


@pytest.fixture
def pose_context(pose_share, pose_model, tmp_path, labpipe_home):
    _, share, _, _ = pose_share
    return PoseContext(
        share,
        pose_model.store,
        tmp_path / "staging",
        PoseAnalysisSettings(device="cpu", cpu_threads=1),
        extra_outputs=(Layout.default(labpipe_home).blobs,),
    )
