"""A run name is one folder under the artifacts root, never a path that leaves it."""

from __future__ import annotations

import pytest
from labpipe.errors import InvalidInput
from labpipe.seg.segment import SegmentationJob


@pytest.mark.parametrize("run", ["../../x", "/etc/cron.d/x", "a/b", "..", "x\x00y", "line\nbreak", "é" * 200])
def test_a_run_name_that_is_not_one_folder_is_refused_before_anything_runs(tmp_path, run):
    with pytest.raises(InvalidInput, match="run name"):
        SegmentationJob(tmp_path / "t.mrc", "tiny", run=run)


def test_plain_run_names_and_the_default_name_are_kept(tmp_path):
    assert SegmentationJob(tmp_path / "t.mrc", "tiny", run="tomo_1-v2.final").run_name() == "tomo_1-v2.final"
    assert SegmentationJob(tmp_path / "t 1.mrc", "tiny").run_name() == "t_1-tiny"
