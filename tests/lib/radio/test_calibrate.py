"""Solving and applying calibration (``labpipe.radio.calibrate``) against the gains a group was simulated with."""

from __future__ import annotations

import math

import numpy as np
import pytest
from labpipe.errors import InvalidInput
from labpipe.radio import calibrate, skymodel
from labpipe.radio.ms import read_layout


def _relative_error(layout, solution, truth):
    chain = calibrate.CalChain(k=solution.k, bp=solution.bp, g=[solution.g])
    est = np.concatenate(
        [chain.jones(u, layout.spw_freqs[u.spw], layout.times_mjd, 2, layout.n_ant)[0] for u in layout.units], axis=1
    )
    ratio = est / truth
    ratio = ratio * np.conj(ratio[..., :1]) / np.abs(ratio[..., :1])  # remove the reference phase
    return np.abs(ratio - 1)


def test_gains_delays_bandpass_recovered_to_the_noise(sim, solved):
    layout, solution = solved
    err = _relative_error(layout, solution, sim.total_gain_ms())
    # thermal limit per channel gain: sigma / (|S_apparent| sqrt(N_ant - 1) sqrt(N_times))
    apparent = solution.field.apparent.mean(axis=(1, 2)).sum()
    noise = sim.noise_jy / (apparent * math.sqrt(layout.n_ant - 1) * math.sqrt(len(layout.times_mjd)))
    assert np.median(err) < 5 * noise + 0.003, (np.median(err), noise)
    assert err.max() < 0.05
    assert solution.k.values.shape == (1, 2, layout.n_ant) and not solution.k.flags.any()
    assert solution.g.qa()["flagged_fraction"] == 0 and solution.g.median_snr() > 50
    assert solution.bp.not_converged == 0


def test_dead_antenna_is_flagged_and_the_rest_still_solve(calgroup, tmp_path):
    sim = calgroup.simulate_group(tmp_path, n_ant=12, n_chan=16, n_time=4, dead_antenna=5, seed=3)
    layout = read_layout(sim.ms, channels_per_unit=16)
    solution = calibrate.solve_group(layout, skymodel.read_catalog(sim.catalog), calibrate.CalibrationSettings())
    assert solution.g.flags[:, :, 5].all() and solution.bp.flags[:, :, 5].all()
    assert not solution.g.flags[:, :, [0, 1, 2, 3, 4, 6]].any()
    err = _relative_error(layout, solution, sim.total_gain_ms())
    assert np.nanmedian(np.delete(err, 5, axis=-1)) < 0.02
    ok, reason = calibrate.passes_qa(solution.g, calibrate.CalibrationSettings(max_flagged_fraction=0.05))
    assert not ok and "flagged fraction" in reason


def test_too_few_antennas_for_the_solver_are_refused_before_solving(calgroup, tmp_path):
    sim = calgroup.simulate_group(tmp_path, n_ant=4, n_chan=8, n_time=2, seed=5)
    layout = read_layout(sim.ms, channels_per_unit=8)
    catalog = skymodel.read_catalog(sim.catalog)
    with pytest.raises(InvalidInput, match="4 antennas give each antenna 3 baselines.*min_baselines = 4") as caught:
        calibrate.solve_group(layout, catalog, calibrate.CalibrationSettings())
    assert caught.value.subject == str(sim.ms) and "min_baselines" in caught.value.hint
    solution = calibrate.solve_group(layout, catalog, calibrate.CalibrationSettings(min_baselines=3))
    assert not solution.g.flags.all()  # three baselines each are enough when the lab says so


def test_apply_divides_by_both_antennas_terms_and_flags_what_the_chain_flags(sim, solved, tmp_path):
    import dataclasses
    import shutil

    from casacore import tables

    layout, solution = solved
    ms = tmp_path / "copy.ms"
    shutil.copytree(sim.ms, ms)
    layout = read_layout(ms, channels_per_unit=16)
    g = dataclasses.replace(solution.g, flags=solution.g.flags.copy())
    g.flags[:, 1, 7] = True  # the Y hand of antenna 7 is flagged
    chain = calibrate.CalChain(k=solution.k, bp=solution.bp, g=[g])
    assert calibrate.apply_chain(layout, chain)["flagged_fraction"] > 0
    with tables.table(str(ms), ack=False) as t:
        data, corrected, flag = t.getcol("DATA"), t.getcol("CORRECTED_DATA"), t.getcol("FLAG")
        a1, a2, times = t.getcol("ANTENNA1"), t.getcol("ANTENNA2"), t.getcol("TIME")
    ti = np.searchsorted(layout.times_mjd * 86400.0, times - 1e-3)
    jones = np.concatenate(
        [chain.jones(u, layout.spw_freqs[u.spw], layout.times_mjd, 2, layout.n_ant)[0] for u in layout.units], axis=1
    )  # (times, chans, pols, ants)
    expected = data / (jones[ti, :, :, a1] * np.conj(jones[ti, :, :, a2]))  # (rows, chans, pols)
    y_of_7 = (a1 == 7) | (a2 == 7)
    good = ~flag
    np.testing.assert_allclose(corrected[good], expected[good], rtol=2e-5)
    assert flag[y_of_7][:, :, 1].all() and (corrected[y_of_7][:, :, 1] == 0).all()
    assert not flag[~y_of_7].any() and not flag[y_of_7][:, :, 0].any()
