"""Videos and labelled sets read and checked for real (OpenCV, pandas), with the errors users would get."""

import shutil

import numpy as np
import pandas as pd
import pytest
from labpipe.errors import InvalidInput
from labpipe.pose.labelled import load_labelled_set
from labpipe.pose.preflight import check_writable
from labpipe.pose.simulate import pixel_errors, write_labelled_frames, write_marker_video
from labpipe.pose.video import check_decodes, probe_video, read_frames


@pytest.fixture
def source(tmp_path):
    truth = write_marker_video(tmp_path / "videos" / "cam.mp4", frames=40, seed=3)
    write_labelled_frames(tmp_path / "labeled-data", tmp_path / "videos" / "cam.mp4", truth, n_frames=8)
    return tmp_path, truth


def test_simulated_video_has_the_markers_where_the_truth_says(source):
    root, truth = source
    info = check_decodes(root / "videos" / "cam.mp4")
    assert (info.fps, info.width, info.height, info.frames) == (25.0, 64, 64, 40)
    frame = read_frames(root / "videos" / "cam.mp4", [10])[0].mean(axis=2)
    for (x, y), radius in zip(truth.positions[10], (3, 2), strict=True):
        yy, xx = np.mgrid[:64, :64]
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
        assert frame[disc].mean() > 150 and frame[~disc & ((yy - y) ** 2 + (xx - x) ** 2 <= 36)].mean() < 120
    assert np.allclose(pixel_errors(truth.positions, truth), 0)


def test_labelled_set_is_read_with_the_facts_of_its_video(source):
    root, _ = source
    labelled = load_labelled_set(root / "labeled-data", videos=root / "videos")
    assert (labelled.scorer, labelled.bodyparts, labelled.fps) == ("sim", ["large", "small"], 25.0)
    assert (labelled.width, labelled.height, labelled.n_frames) == (64, 64, 8)
    assert load_labelled_set(root / "labeled-data", videos=root / "videos").fingerprint == labelled.fingerprint
    (root / "labeled-data" / "cam" / "img0000.png").write_bytes(b"changed")
    with pytest.raises(InvalidInput, match="missing or unreadable"):
        load_labelled_set(root / "labeled-data", videos=root / "videos")


def test_source_video_must_be_found_exactly_once(source, tmp_path_factory):
    root, _ = source
    with pytest.raises(InvalidInput, match="source video of the labelled frames not found"):
        load_labelled_set(root / "labeled-data", videos=tmp_path_factory.mktemp("empty"))
    # a raw and a deinterlaced copy under one name: which one the frames came from is not guessed
    (root / "videos" / "deinterlaced").mkdir()
    shutil.copy(root / "videos" / "cam.mp4", root / "videos" / "deinterlaced" / "cam.avi")
    with pytest.raises(InvalidInput, match="several candidate source videos"):
        load_labelled_set(root / "labeled-data", videos=root / "videos")


def test_labels_outside_the_frame_or_by_several_scorers_are_refused(source):
    root, _ = source
    h5 = root / "labeled-data" / "cam" / "CollectedData_sim.h5"
    table = pd.read_hdf(h5)
    table.iloc[0, 0] = 80.0
    table.to_hdf(h5, key="df_with_missing", mode="w")
    with pytest.raises(InvalidInput, match="labels outside the 64x64 frame"):
        load_labelled_set(root / "labeled-data", videos=root / "videos")
    truth = write_marker_video(root / "videos" / "cam2.mp4", frames=20, seed=4)
    write_labelled_frames(root / "labeled-data", root / "videos" / "cam2.mp4", truth, n_frames=4, scorer="bob")
    table.iloc[0, 0] = 10.0
    table.to_hdf(h5, key="df_with_missing", mode="w")
    with pytest.raises(InvalidInput, match="several scorers"):
        load_labelled_set(root / "labeled-data", videos=root / "videos")


def test_videos_of_different_frame_rates_cannot_train_one_model(source):
    root, _ = source
    truth = write_marker_video(root / "videos" / "fast.mp4", frames=20, fps=50, seed=5)
    write_labelled_frames(root / "labeled-data", root / "videos" / "fast.mp4", truth, n_frames=4)
    with pytest.raises(InvalidInput, match=r"differ in frame rate \[25.0, 50.0\]"):
        load_labelled_set(root / "labeled-data", videos=root / "videos")


def test_broken_videos_are_named(tmp_path):
    with pytest.raises(InvalidInput, match="video file not found"):
        probe_video(tmp_path / "absent.mp4")
    write_marker_video(tmp_path / "whole.mp4", frames=40, seed=1)
    data = (tmp_path / "whole.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # a copy interrupted halfway
    with pytest.raises(InvalidInput, match="cannot be opened") as caught:
        check_decodes(tmp_path / "cut.mp4")
    assert caught.value.subject.endswith("cut.mp4")


def test_writable_check_really_creates_a_file(tmp_path):
    assert check_writable(tmp_path / "new" / "folder") is None
    assert list((tmp_path / "new" / "folder").iterdir()) == []  # the probe file is removed
    (tmp_path / "a-file").write_text("x")
    problem = check_writable(tmp_path / "a-file")
    assert problem is not None and problem.check == "output" and "not writable" in problem.problem
