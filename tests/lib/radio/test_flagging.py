"""RFI flagging with AOFlagger against the simulator's truth: recall, false positives, the faulty input, and
what flagging does for calibration.

The group: 12 antennas, 16 subbands x 16 channels, 24 integrations, the simulator's default RFI
(five persistent narrow-band emitters of 10-200 Jy, two broadband bursts of 10-100 Jy over a quarter
to all of the band in one integration, antenna index 3 with three times the thermal noise on its
baselines; couplings 0.16-1 per baseline), a
sky far brighter than the noise per visibility (the hard case: the sky's structure must not look
like interference).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from labpipe.radio import calibrate, flagging, simulate, skymodel
from labpipe.radio.convert import convert_group
from labpipe.radio.ms import read_layout

N_ANT, N_CHAN = 12, 16


@pytest.fixture(scope="module")
def rfi_group(tmp_path_factory):
    out = tmp_path_factory.mktemp("rfi")
    group = simulate.simulate_group(
        out / "incoming", n_antennas=N_ANT, n_channels=N_CHAN, truth_dir=out / "truth", seed=4,
        rfi=simulate.RfiInjection(), data_dtype="complex64",
    )  # fmt: skip
    ms = out / "raw.ms"
    convert_group(sorted(group.files.values()), ms)
    return ms, simulate.load_truth(group.truth), group.catalog


def _copy(ms: Path, tmp_path: Path) -> Path:
    target = tmp_path / "group.ms"
    shutil.copytree(ms, target)
    return target


def test_aoflagger_finds_the_injected_rfi_with_few_false_positives(rfi_group, tmp_path):
    """Measured on this group: recall 1.0 by sample and by injected power, false positives 4.3 %.

    The false positives are the neighbours of narrow emitters (a quarter of their power leaks
    through the high-pass) and AOFlagger's extension of the bursts. With emitters ten times fainter
    (3-36 Jy) the same code measured recall 0.974, 0.995 by power, false positives 3.5 %: the faint
    skirts are what is missed. The thresholds leave room for another seed, not for a regression.
    """
    raw, truth, _ = rfi_group
    ms = _copy(raw, tmp_path)
    report = flagging.flag_ms(ms, flagging.FlagSettings(channels_per_unit=N_CHAN))
    score = flagging.score_flags(ms, truth)
    assert report.bad_antennas == [str(truth.antenna_names[truth.bad_antenna])]
    assert score.bad_input_recall == 1.0
    assert score.recall >= 0.97, score
    assert score.recall_power >= 0.99, score
    assert score.false_positive <= 0.06, score
    assert report.flagged_before == 0 and report.flagged_after > score.injected_fraction * 0.9


def test_flags_are_only_added(rfi_group, tmp_path):
    from casacore import tables

    raw, _, _ = rfi_group
    ms = _copy(raw, tmp_path)
    with tables.table(str(ms), readonly=False, ack=False) as t:
        before = t.getcol("FLAG")
        before[::7, 100:110] = True  # an earlier step's flags
        t.putcol("FLAG", before)
    report = flagging.flag_ms(ms, flagging.FlagSettings(channels_per_unit=N_CHAN))
    with tables.table(str(ms), ack=False) as t:
        after = t.getcol("FLAG")
    assert after[before].all()
    assert report.flagged_before > 0 and report.flagged_after > report.flagged_before


def test_per_baseline_pass_adds_flags_without_losing_recall(rfi_group, tmp_path):
    raw, truth, _ = rfi_group
    ms = _copy(raw, tmp_path)
    report = flagging.flag_ms(ms, flagging.FlagSettings(channels_per_unit=N_CHAN, baseline_level=True))
    score = flagging.score_flags(ms, truth)
    assert report.timings["aoflagger_runs"] > N_ANT * (N_ANT - 1) // 2 - N_ANT  # every good baseline ran
    assert score.recall >= 0.97 and score.false_positive <= 0.15, score


def test_a_clean_group_is_left_nearly_untouched(tmp_path):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("calgroup", Path(__file__).with_name("calgroup.py"))
    calgroup = importlib.util.module_from_spec(spec)
    sys.modules["calgroup"] = calgroup
    spec.loader.exec_module(calgroup)
    sim = calgroup.simulate_group(tmp_path, n_ant=16, n_chan=64, n_time=12)
    report = flagging.flag_ms(sim.ms, flagging.FlagSettings(channels_per_unit=32))
    assert report.bad_antennas == []
    assert report.flagged_after <= 0.02, report


def _jones_error(layout, solution, truth) -> tuple[np.ndarray, np.ndarray]:
    """|J_est / J_true - 1| per (time, chan, pol, antenna) with the reference phase removed, and the flags."""
    chain = calibrate.CalChain(k=solution.k, bp=solution.bp, g=[solution.g])
    parts = [chain.jones(u, layout.spw_freqs[u.spw], layout.times_mjd, 2, layout.n_ant) for u in layout.units]
    est = np.concatenate([p[0] for p in parts], axis=1)[..., np.asarray(truth.antenna_numbers)]
    bad = np.concatenate([p[1] for p in parts], axis=1)[..., np.asarray(truth.antenna_numbers)]
    ratio = est / np.transpose(truth.jones(), (1, 2, 3, 0))
    ref = 0 if truth.bad_antenna != 0 else 1
    ratio = ratio * np.conj(ratio[..., ref : ref + 1]) / np.abs(ratio[..., ref : ref + 1])
    return np.abs(ratio - 1), bad


def test_flagging_repairs_calibration_spoilt_by_rfi(rfi_group, tmp_path):
    """Calibration of the same group with and without flagging, against the true Jones terms.

    Measured (good antennas): without flagging the median error is 2.8 % (5.1 % in the channels and
    integrations with interference), 95th percentile 8.1 %; flagged, 1.04 % (1.09 % there), 5.1 %,
    with 6.6 % of the solutions flagged (the emitters' channels).
    """
    raw, truth, catalog_path = rfi_group
    catalog = skymodel.read_catalog(catalog_path)
    settings = calibrate.CalibrationSettings(channels_per_unit=N_CHAN)
    errors = {}
    for flag in (False, True):
        ms = _copy(raw, tmp_path / ("flagged" if flag else "raw"))
        if flag:
            flagging.flag_ms(ms, flagging.FlagSettings(channels_per_unit=N_CHAN))
        layout = read_layout(ms, N_CHAN)
        err, bad = _jones_error(layout, calibrate.solve_group(layout, catalog, settings), truth)
        good = np.ones(err.shape[-1], bool)
        good[truth.bad_antenna] = False
        errors[flag] = (err[..., good], bad[..., good])
    raw_err, _ = errors[False]
    flagged_err, flagged_bad = errors[True]
    kept = ~flagged_bad
    assert kept.mean() > 0.9  # flagging lost few solutions
    assert np.nanmedian(flagged_err[kept]) < 0.5 * np.nanmedian(raw_err)
    assert np.nanpercentile(flagged_err[kept], 95) < 0.8 * np.nanpercentile(raw_err, 95)
