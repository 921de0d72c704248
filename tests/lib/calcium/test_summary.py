"""The population summary's picture of a stack, drawn from a real population run on a simulated session.

What it must show (issue 18): the mean image with an outline per ROI, the dF/F of the surest cells with the
spikes OASIS inferred under each trace, and the trial starts the behaviour population aligned.
"""

import numpy as np
import pytest
from labpipe.behavior.schema import tables as behavior_tables
from labpipe.calcium.populate import run_population
from labpipe.calcium.schema import CalciumContext, tables
from labpipe.calcium.settings import Suite2pSettings
from labpipe.calcium.simulate import RecordingSpec
from labpipe.calcium.summary import processed_stacks, stack_figure, stack_pictures
from labpipe.ingest.run import ingest_share
from labpipe.ingest.simulate_science import simulate_science_share

SPEC = RecordingSpec(frames=1500, height=64, width=64, cells=10, photons=8, rate_hz=0.6, seed=1)


@pytest.mark.slow
def test_the_summary_picture_shows_rois_traces_spikes_and_trials(lab_db, tmp_path):
    share = simulate_science_share(tmp_path / "share", 1, spec=SPEC, video=False)
    assert ingest_share(lab_db, share.root).status == "succeeded"
    context = CalciumContext(share.root, tmp_path / "scratch", Suite2pSettings.small())
    for population in ("imaging", "behavior"):
        assert run_population(lab_db, population, context).errors == []
    (key,) = processed_stacks(lab_db)
    rois = len(tables(lab_db).Segmentation.Mask & key)
    cells = len(tables(lab_db).Segmentation.Mask & key & "is_cell")
    trials = len(behavior_tables(lab_db).BehaviorSession.Trial & key & "start_frame >= 0")

    figure = stack_figure(lab_db, key)
    image, traces = figure.axes
    assert len(image.images) == 1 and len(image.collections) == rois  # one outline per ROI
    assert len(traces.lines) - trials == min(4, cells)  # the traces, then a vertical line per trial start
    ticks = [c for c in traces.collections if len(c.get_segments())]
    assert len(ticks) == min(4, cells) and all(len(t.get_segments()) > 3 for t in ticks)  # OASIS spikes per cell
    starts = [line.get_xdata()[0] for line in traces.lines[-trials:]]
    assert trials > 5 and np.all(np.diff(starts) > 0) and starts[-1] <= traces.lines[0].get_xdata()[-1]

    (picture,) = stack_pictures(lab_db, session=key["session_id"])
    assert picture.startswith(f"![{key['session_id']} imaging_00001.tif") and "data:image/png;base64," in picture
    assert stack_pictures(lab_db, session="NOSUCHID") == []
