"""`labpipe radio flag|calibrate|image MS` by hand, as users run them: real processes on simulated groups."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from labpipe.radio import flagging, simulate
from labpipe.radio.convert import convert_group


def _calgroup():
    path = Path(__file__).parents[1] / "lib" / "radio" / "calgroup.py"
    spec = importlib.util.spec_from_file_location("calgroup", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["calgroup"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_flag_finds_the_injected_rfi(labpipe_cli, tmp_path):
    group = simulate.simulate_group(
        tmp_path / "incoming", n_antennas=12, n_channels=16, truth_dir=tmp_path / "truth", seed=4,
        rfi=simulate.RfiInjection(), data_dtype="complex64",
    )  # fmt: skip
    ms = tmp_path / "raw.ms"
    convert_group(sorted(group.files.values()), ms)
    truth = simulate.load_truth(group.truth)

    result = labpipe_cli(tmp_path / "home", "radio", "flag", str(ms), "--channels-per-unit", "16", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["flagged_after"] > report["flagged_before"]
    assert report["bad_antennas"] == [str(truth.antenna_names[truth.bad_antenna])]
    score = flagging.score_flags(ms, truth)
    assert score.recall >= 0.97 and score.false_positive <= 0.06, score


@pytest.mark.slow
def test_calibrate_then_image_one_ms_by_hand(labpipe_cli, tmp_path):
    from casacore import tables

    sim = _calgroup().simulate_group(tmp_path / "sim", n_ant=24, n_chan=16, n_time=6, seed=11)
    ms = tmp_path / "mine.ms"
    shutil.copytree(sim.ms, ms)
    home = tmp_path / "home"

    solved = labpipe_cli(home, "radio", "calibrate", str(ms), "--catalog", str(sim.catalog),
                         "--channels-per-unit", "8", "--json")  # fmt: skip
    assert solved.returncode == 0, solved.stderr
    report = json.loads(solved.stdout)
    assert set(report["tables"]) == {"K", "BP", "G"} and all(t["passed"] for t in report["tables"].values())
    for t in report["tables"].values():
        with tables.table(t["path"], ack=False) as tab:
            assert tab.nrows() > 0
    with tables.table(str(ms), ack=False) as tab:
        corrected = tab.getcol("CORRECTED_DATA")
        assert np.isfinite(corrected).all() and np.abs(corrected).max() > 0

    imaged = labpipe_cli(home, "radio", "image", str(ms), "--npix", "512", "--cell", "45", "--sources",
                         "--channels-per-unit", "8", "--json")  # fmt: skip
    assert imaged.returncode == 0, imaged.stderr
    out = json.loads(imaged.stdout)
    assert Path(out["images"]["image.pbcor"]).exists() and out["npix"] == 512
    assert out["sources"] >= 1 and Path(out["catalogue"]).exists()


def test_a_folder_that_is_not_an_ms_is_named(labpipe_cli, tmp_path):
    bogus = tmp_path / "nothing.ms"
    bogus.mkdir()
    result = labpipe_cli(tmp_path / "home", "radio", "flag", str(bogus))
    assert result.returncode == 2
    assert "nothing.ms" in result.stderr
