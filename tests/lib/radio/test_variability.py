"""Variability metrics and the ESE criterion on light curves whose truth is known.

Steady sources: Gaussian errors only, so eta follows chi-square(N - 1) / (N - 1) and neither flag may
fire beyond its documented false-alarm rate; a source whose flux jumps (the simulator's
``variable_lightcurve``); an ESE-like dip (``ese_lightcurve``).
"""

from __future__ import annotations

import numpy as np
import pytest
from labpipe.radio import simulate, variability
from labpipe.radio.variability import VariabilitySettings

EPOCHS = np.arange(60000.0, 60040.0)  # one a day, as a drift scan sees a field


def _curve(scales, flux_jy, err_jy, rng):
    flux = flux_jy * np.asarray(scales) + err_jy * rng.standard_normal(len(scales))
    return flux, np.full(len(scales), err_jy)


def test_v_and_eta_match_their_definitions():
    flux = np.array([1.0, 1.2, 0.8, 1.1])
    sigma = np.array([0.1, 0.1, 0.2, 0.1])
    v, eta = variability.v_and_eta(flux, sigma)
    assert v == pytest.approx(np.std(flux, ddof=1) / np.mean(flux))
    w = 1 / sigma**2
    mean_w = np.sum(w * flux) / np.sum(w)
    assert eta == pytest.approx(np.sum(w * (flux - mean_w) ** 2) / (len(flux) - 1))  # reduced chi-square


def test_steady_sources_raise_no_flags_and_eta_follows_chi_square():
    """2000 steady light curves (20 mJy to 1 Jy, 1 mJy errors): no ESE candidate, variables at the false-alarm rate."""
    rng = np.random.default_rng(1)
    settings = VariabilitySettings()
    etas, variables, candidates = [], 0, 0
    for _ in range(2000):
        flux, err = _curve(np.ones(len(EPOCHS)), 10 ** rng.uniform(np.log10(0.02), 0), 1e-3, rng)
        result = variability.assess(EPOCHS, flux, err, settings)
        etas.append(result.eta * (1 + (settings.systematic_fraction * np.median(flux) / 1e-3) ** 2))
        variables += result.is_variable
        candidates += result.ese_candidate
    assert candidates == 0
    assert variables <= 2  # false-alarm 1e-4 per source: 0.2 expected
    # without the systematic term the statistic is chi-square(39) / 39: mean 1, std sqrt(2 / 39)
    assert np.mean(etas) == pytest.approx(1.0, abs=0.03)
    assert np.std(etas) == pytest.approx(np.sqrt(2 / 39), rel=0.1)


def test_a_variable_is_flagged_and_is_no_ese():
    rng = np.random.default_rng(2)
    scales = [s for _, s in simulate.variable_lightcurve(EPOCHS, modulation=0.3, seed=3)]
    flux, err = _curve(scales, 0.1, 1e-3, rng)
    result = variability.assess(EPOCHS, flux, err)
    assert result.is_variable and result.v_index > 0.15 and result.eta > 10 * result.eta_threshold
    assert not result.ese_candidate


def test_an_ese_dip_is_found_where_it_is():
    rng = np.random.default_rng(4)
    curve = simulate.ese_lightcurve(EPOCHS, centre_mjd=60020.0, fwhm_days=6.0, depth=0.4)
    flux, err = _curve([s for _, s in curve], 0.1, 1e-3, rng)
    result = variability.assess(EPOCHS, flux, err)
    assert result.ese_candidate
    assert result.ese.start_mjd <= 60019 and result.ese.end_mjd >= 60021
    assert abs((result.ese.start_mjd + result.ese.end_mjd) / 2 - 60020.0) <= 1.0
    assert result.ese.depth == pytest.approx(0.4, abs=0.05)


def test_ese_criterion_needs_flat_wings_duration_and_depth():
    rng = np.random.default_rng(5)
    base = np.ones(len(EPOCHS))
    step = base.copy()
    step[20:] = 0.6  # a drop that does not come back: no wing on the right
    one_epoch = base.copy()
    one_epoch[20] = 0.5  # a single low point: too short
    shallow = np.array([s for _, s in simulate.ese_lightcurve(EPOCHS, centre_mjd=60020.0, fwhm_days=6, depth=0.08)])
    at_the_end = np.array([s for _, s in simulate.ese_lightcurve(EPOCHS, centre_mjd=60039.0, fwhm_days=6, depth=0.4)])
    for scales in (step, one_epoch, shallow, at_the_end):
        flux, err = _curve(scales, 0.1, 1e-3, rng)
        assert not variability.assess(EPOCHS, flux, err).ese_candidate


def test_too_few_epochs_are_not_assessed():
    assert variability.assess(EPOCHS[:4], np.ones(4), np.full(4, 0.01)) is None
