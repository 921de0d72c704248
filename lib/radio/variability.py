"""Variability of light curves: the modulation index V, the weighted reduced chi-square eta, and ESE candidates.

With fluxes f_i and errors s_i (the forced-photometry error with a systematic fraction of the
median flux added in quadrature, ``systematic_fraction``: calibration repeats to ~2 %, which thermal
errors do not know), weights w_i = 1 / s_i^2, N epochs:

- V = std(f) / mean(f) (sample standard deviation);
- eta = N / (N - 1) (mean(w f^2) - mean(w f)^2 / mean(w)), the reduced chi-square of the light curve
  about its weighted mean (Swinbank et al. 2015; VAST, Murphy et al. 2021).

A source is **variable** when N >= ``min_epochs``, eta exceeds the value a steady source passes with
probability ``eta_false_alarm`` (eta of a steady source follows chi-square(N - 1) / (N - 1)), and
V >= ``min_v`` (so that a bright, steady source is not flagged for its small calibration wobble).

An **extreme-scattering-event (ESE) candidate** has a dip, the criterion being all of:

1. a run of at least ``ese_min_epochs`` consecutive epochs each at least ``ese_edge_sigma`` below the
   median (z_i = (median - f_i) / s_i >= ``ese_edge_sigma``);
2. its deepest epoch at least ``ese_depth_sigma`` below the median and ``ese_min_depth`` of it in flux;
3. flat wings: at least ``ese_wing_epochs`` epochs on each side of the run, all within
   ``ese_wing_sigma`` of the median (|z| < ``ese_wing_sigma``): the source returns to where it was,
   which a source that simply varies does not;
4. symmetric: the deficit-weighted centre of the run, sum t_i z_i / sum z_i, lies within
   ``ese_symmetry`` of the run's duration of its midpoint.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from labpipe.db.connect import LabDatabase
from labpipe.radio import catalogue
from pydantic import BaseModel, Field


class VariabilitySettings(BaseModel):
    """What makes a light curve variable, and an ESE candidate."""

    min_epochs: int = Field(5, description="Epochs needed before a source is assessed.")
    systematic_fraction: float = Field(0.02, description="Systematic flux error (fraction of the median) added.")
    eta_false_alarm: float = Field(1e-4, description="Chance a steady source exceeds the eta threshold.")
    min_v: float = Field(0.05, description="Smallest modulation index flagged as variable.")
    ese_min_epochs: int = Field(3, description="ESE: epochs in the dip at least.")
    ese_edge_sigma: float = Field(2.0, description="ESE: every dip epoch this many sigmas below the median.")
    ese_depth_sigma: float = Field(5.0, description="ESE: the deepest epoch this many sigmas below the median.")
    ese_min_depth: float = Field(0.15, description="ESE: the deepest epoch this fraction below the median.")
    ese_wing_epochs: int = Field(2, description="ESE: flat epochs needed on each side of the dip.")
    ese_wing_sigma: float = Field(3.0, description="ESE: wing epochs within this many sigmas of the median.")
    ese_symmetry: float = Field(0.25, description="ESE: largest offset of the dip's centre (fraction of its span).")


@dataclass
class EseDip:
    """The dip that makes a light curve an ESE candidate."""

    start_mjd: float
    end_mjd: float
    n_epochs: int
    depth: float  # fraction of the median
    sigma: float  # deepest epoch, sigmas below the median


@dataclass
class Assessment:
    """Variability of one light curve."""

    n_epochs: int
    mean_flux_jy: float
    median_flux_jy: float
    v_index: float
    eta: float
    eta_threshold: float
    is_variable: bool
    ese: EseDip | None

    @property
    def ese_candidate(self) -> bool:
        return self.ese is not None


def total_errors(flux: np.ndarray, err: np.ndarray, systematic_fraction: float) -> np.ndarray:
    """Statistical errors with ``systematic_fraction`` of the median flux added in quadrature."""
    return np.sqrt(err**2 + (systematic_fraction * abs(float(np.median(flux)))) ** 2)


def v_and_eta(flux: np.ndarray, sigma: np.ndarray) -> tuple[float, float]:
    """(V, eta) of a light curve with total errors ``sigma`` (NaN for fewer than two epochs)."""
    n = len(flux)
    if n < 2:
        return math.nan, math.nan
    mean = float(np.mean(flux))
    v = float(np.std(flux, ddof=1) / mean) if mean != 0 else math.nan
    w = 1.0 / sigma**2
    eta = n / (n - 1) * (np.mean(w * flux**2) - np.mean(w * flux) ** 2 / np.mean(w))
    return v, float(eta)


def eta_threshold(n_epochs: int, false_alarm: float) -> float:
    """eta a steady source exceeds with probability ``false_alarm`` (chi-square with N - 1 dof, reduced)."""
    from scipy.stats import chi2

    dof = max(n_epochs - 1, 1)
    return float(chi2.isf(false_alarm, dof) / dof)


def find_ese(mjd: np.ndarray, flux: np.ndarray, sigma: np.ndarray, settings: VariabilitySettings) -> EseDip | None:
    """The deepest dip meeting the ESE criterion (see the module doc), or None. ``mjd`` ascending."""
    median = float(np.median(flux))
    if median <= 0:
        return None
    z = (median - flux) / sigma
    low = z >= settings.ese_edge_sigma
    best = None
    i = 0
    while i < len(z):
        if not low[i]:
            i += 1
            continue
        j = i
        while j + 1 < len(z) and low[j + 1]:
            j += 1
        run = slice(i, j + 1)
        i = j + 1
        n = run.stop - run.start
        deepest = int(np.argmax(z[run])) + run.start
        depth = (median - flux[deepest]) / median
        if n < settings.ese_min_epochs or z[deepest] < settings.ese_depth_sigma or depth < settings.ese_min_depth:
            continue
        left = z[max(run.start - settings.ese_wing_epochs, 0) : run.start]
        right = z[run.stop : run.stop + settings.ese_wing_epochs]
        if len(left) < settings.ese_wing_epochs or len(right) < settings.ese_wing_epochs:
            continue
        if np.any(np.abs(left) >= settings.ese_wing_sigma) or np.any(np.abs(right) >= settings.ese_wing_sigma):
            continue
        t0, t1 = float(mjd[run.start]), float(mjd[run.stop - 1])
        centre = float(np.sum(mjd[run] * z[run]) / np.sum(z[run]))
        if t1 > t0 and abs(centre - (t0 + t1) / 2) > settings.ese_symmetry * (t1 - t0):
            continue
        dip = EseDip(t0, t1, n, float(depth), float(z[deepest]))
        if best is None or dip.sigma > best.sigma:
            best = dip
    return best


def assess(mjd, flux, err, settings: VariabilitySettings | None = None) -> Assessment | None:
    """Variability of one light curve (None when it has fewer than ``min_epochs`` finite points)."""
    settings = settings or VariabilitySettings()
    mjd, flux, err = (np.asarray(a, float) for a in (mjd, flux, err))
    keep = np.isfinite(mjd) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    order = np.argsort(mjd[keep])
    mjd, flux, err = mjd[keep][order], flux[keep][order], err[keep][order]
    if len(flux) < max(settings.min_epochs, 2):
        return None
    sigma = total_errors(flux, err, settings.systematic_fraction)
    v, eta = v_and_eta(flux, sigma)
    threshold = eta_threshold(len(flux), settings.eta_false_alarm)
    variable = bool(eta > threshold and v >= settings.min_v)
    return Assessment(len(flux), float(np.mean(flux)), float(np.median(flux)), v, eta, threshold, variable,
                      find_ese(mjd, flux, sigma, settings))  # fmt: skip


def update_variability(
    db: LabDatabase,
    source_ids: list[int] | None = None,
    settings: VariabilitySettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[int, Assessment]:
    """Assess the light curves of ``source_ids`` (all master sources: None) and record them in ``Variability``."""
    from labpipe.radio.photometry import light_curve

    settings = settings or VariabilitySettings()
    t = catalogue.tables(db)
    if source_ids is None:
        source_ids = t.MasterSource.to_arrays("source_id").tolist() if t.MasterSource else []
    out = {}
    for k, source_id in enumerate(sorted({int(s) for s in source_ids})):
        curve = light_curve(db, source_id)
        result = assess(curve.mjd, curve.flux_jy, curve.flux_err_jy, settings)
        if result is not None:
            out[source_id] = result
            _record(t, source_id, curve, result)
        if progress:
            progress(k + 1, len(source_ids))
    return out


def _record(t, source_id: int, curve, result: Assessment) -> None:
    ese = result.ese
    row = dict(
        source_id=source_id, n_epochs=result.n_epochs, mean_flux_jy=result.mean_flux_jy,
        median_flux_jy=result.median_flux_jy, v_index=result.v_index, eta=result.eta,
        eta_threshold=result.eta_threshold, is_variable=result.is_variable, ese_candidate=ese is not None,
        ese_start_mjd=ese.start_mjd if ese else None, ese_end_mjd=ese.end_mjd if ese else None,
        ese_depth=ese.depth if ese else None, ese_sigma=ese.sigma if ese else None,
        lightcurve=np.stack([curve.mjd, curve.flux_jy, curve.flux_err_jy]),
        updated=dt.datetime.now().replace(microsecond=0),
    )  # fmt: skip
    with t.schema.connection.transaction:  # insert or replace (replace=True is MySQL-only in DataJoint 2.3.5)
        (t.Variability & {"source_id": source_id}).delete_quick()
        t.Variability.insert1(row)


def flagged(db: LabDatabase) -> dict[str, list[int]]:
    """Source ids flagged variable and ESE candidates."""
    t = catalogue.tables(db)
    return {
        "variable": sorted((t.Variability & "is_variable").to_arrays("source_id").tolist()),
        "ese_candidate": sorted((t.Variability & "ese_candidate").to_arrays("source_id").tolist()),
    }
