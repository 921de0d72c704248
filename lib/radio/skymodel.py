"""Sky model per field from a catalog: brightest sources in the primary beam, predicted into visibilities.

The catalog is an NVSS-like CSV (one point source a line: position in degrees, flux density at a
reference frequency, optionally a spectral index). The primary beam is the Airy pattern of a
uniformly illuminated dish (DSA-110: 4.65 m), per frequency. DSA-110 is a transit array: its dishes
point at the meridian, so by default the beam centre drifts in RA with the local sidereal time during
a group; ``pointing="phase_center"`` models a tracking dish instead.

Visibility convention (the Measurement Set's, checked against CASA's ``ft`` of a component list):
V_pq = sum_s S_s A_s exp(+2 pi i (u l + v m + w (n - 1)) / lambda) with (u, v, w) the MS ``UVW`` of the
row and l towards east.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from labpipe.errors import InvalidInput
from pydantic import BaseModel, Field

C_LIGHT = 299_792_458.0
DISH_DIAMETER_M = 4.65

# Accepted spellings of the catalog columns (lower-case); a real NVSS extract and the simulator's CSV both fit.
_RA = ("ra_deg", "ra", "raj2000", "ra_j2000")
_DEC = ("dec_deg", "dec", "dej2000", "decj2000", "dec_j2000")
_FLUX_JY = ("flux_jy", "s_jy", "flux", "i_jy", "stokes_i_jy")
_FLUX_MJY = ("flux_mjy", "s1.4", "s_mjy", "s1400", "peak_mjy", "i_mjy")
_ALPHA = ("spectral_index", "alpha", "si", "spindex")
_REF_FREQ = ("ref_freq_hz", "freq_hz", "reference_frequency_hz")
_NAME = ("name", "source", "id", "nvss")


class SkyModelSettings(BaseModel):
    """How the calibration sky model is chosen from the catalog."""

    catalog: Path | None = Field(None, description="NVSS-like CSV; empty: <radio>/static/catalogs/nvss.csv.")
    dish_diameter_m: float = Field(DISH_DIAMETER_M, description="Dish diameter of the Airy primary beam (m).")
    max_sources: int = Field(40, description="Keep at most this many sources, brightest apparent flux first.")
    min_beam: float = Field(0.02, description="Ignore sources where the primary beam power is below this.")
    min_apparent_jy: float = Field(0.005, description="Ignore sources fainter than this after the beam (Jy).")
    pointing: Literal["meridian", "phase_center"] = Field(
        "meridian",
        description="Beam centre: the meridian at the field's declination (transit dish) or the phase centre.",
    )
    xx_per_stokes_i: float = Field(1.0, description="XX = YY = this x I for an unpolarised source (CASA: 1).")


@dataclass
class Catalog:
    """Point sources: J2000 positions (deg), flux at ``ref_freq`` (Jy), spectral index."""

    name: np.ndarray
    ra_deg: np.ndarray
    dec_deg: np.ndarray
    flux_jy: np.ndarray
    alpha: np.ndarray
    ref_freq_hz: np.ndarray

    def __len__(self) -> int:
        return len(self.ra_deg)

    def subset(self, index) -> Catalog:
        return Catalog(
            *(getattr(self, f)[index] for f in ("name", "ra_deg", "dec_deg", "flux_jy", "alpha", "ref_freq_hz"))
        )

    def flux_at(self, freqs_hz: np.ndarray) -> np.ndarray:
        """(sources, freqs) flux density in Jy."""
        return (
            self.flux_jy[:, None] * (np.asarray(freqs_hz)[None, :] / self.ref_freq_hz[:, None]) ** self.alpha[:, None]
        )


def _column(header: list[str], names: tuple[str, ...]) -> str | None:
    lower = {h.strip().lower(): h for h in header}
    return next((lower[n] for n in names if n in lower), None)


def read_catalog(path: Path, default_ref_freq_hz: float = 1.4e9) -> Catalog:
    """Read an NVSS-like CSV; raises ``InvalidInput`` naming the file and the missing column."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(
            path, "catalog file not found", "set the sky model's catalog or put nvss.csv in static/catalogs"
        )
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    if not rows:
        raise InvalidInput(path, "catalog has no sources")
    header = list(rows[0])
    ra, dec = _column(header, _RA), _column(header, _DEC)
    flux_jy, flux_mjy = _column(header, _FLUX_JY), _column(header, _FLUX_MJY)
    if ra is None or dec is None or (flux_jy is None and flux_mjy is None):
        raise InvalidInput(
            path, f"catalog columns {header} lack a position or a flux", "expected ra_deg, dec_deg, flux_jy"
        )
    alpha, ref, name = _column(header, _ALPHA), _column(header, _REF_FREQ), _column(header, _NAME)
    try:
        flux = np.array([float(r[flux_jy]) if flux_jy else float(r[flux_mjy]) / 1e3 for r in rows])
        catalog = Catalog(
            name=np.array([r[name] if name else f"src{i:05d}" for i, r in enumerate(rows)]),
            ra_deg=np.array([float(r[ra]) for r in rows]),
            dec_deg=np.array([float(r[dec]) for r in rows]),
            flux_jy=flux,
            alpha=np.array([float(r[alpha]) if alpha and r[alpha] not in ("", None) else -0.7 for r in rows]),
            ref_freq_hz=np.array([float(r[ref]) if ref and r[ref] else default_ref_freq_hz for r in rows]),
        )
    except ValueError as exc:
        raise InvalidInput(path, f"catalog has a non-numeric value: {exc}", "fix or remove that line") from exc
    return catalog


def airy_power(theta_rad: np.ndarray, freq_hz: np.ndarray | float, dish_m: float = DISH_DIAMETER_M) -> np.ndarray:
    """Primary beam power (2 J1(x) / x)^2 of a uniformly illuminated dish, x = pi D sin(theta) / lambda."""
    from scipy.special import j1

    x = np.pi * dish_m * np.sin(np.asarray(theta_rad)) * np.asarray(freq_hz) / C_LIGHT
    x = np.where(np.abs(x) < 1e-9, 1e-9, x)
    return (2 * j1(x) / x) ** 2


def lmn(ra_deg, dec_deg, ra0_deg: float, dec0_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Direction cosines of (ra, dec) relative to the phase centre (l east, m north)."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    ra0, dec0 = math.radians(ra0_deg), math.radians(dec0_deg)
    dra = ra - ra0
    l_ = np.cos(dec) * np.sin(dra)
    m_ = np.sin(dec) * math.cos(dec0) - np.cos(dec) * math.sin(dec0) * np.cos(dra)
    n_ = np.sin(dec) * math.sin(dec0) + np.cos(dec) * math.cos(dec0) * np.cos(dra)
    return l_, m_, n_


def angular_separation(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Great-circle separation in radians (inputs in degrees, broadcast)."""
    ra1, dec1, ra2, dec2 = map(np.radians, (ra1, dec1, ra2, dec2))
    s = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return 2 * np.arcsin(np.sqrt(np.clip(s, 0, 1)))


def pointing_radec_deg(
    times_mjd: np.ndarray, location, ra0_deg: float, dec0_deg: float, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """ICRS beam centre per time: the meridian at the field's of-date declination, or the phase centre.

    A transit dish keeps its of-date declination at hour angle zero. The field's ICRS centre is
    precessed to the date (IAU 2006/2000A, erfa), the meridian (local sidereal time, UT1 taken as UTC)
    at that declination taken back to ICRS per time. Aberration, nutation of the pole and UT1-UTC move
    the beam by well under an arcminute against a 2.7 degree beam; skipping astropy's IERS-based
    transforms saves ~10 s per process.
    """
    times_mjd = np.atleast_1d(np.asarray(times_mjd, dtype=float))
    if mode == "phase_center":
        return np.full(times_mjd.shape, ra0_deg), np.full(times_mjd.shape, dec0_deg)
    import erfa

    jd1 = 2400000.5
    mid = float(times_mjd.mean())
    pnm = erfa.pnm06a(jd1, mid)  # ICRS -> true equator and equinox of date
    centre = erfa.s2c(math.radians(ra0_deg), math.radians(dec0_deg))
    dec_date = erfa.c2s(pnm @ centre)[1]
    lst = erfa.gst06a(jd1, times_mjd, jd1, times_mjd) + location.lon.rad
    ra_out, dec_out = np.empty(len(times_mjd)), np.empty(len(times_mjd))
    for k, ra_date in enumerate(lst):
        back = pnm.T @ erfa.s2c(ra_date, dec_date)
        ra_out[k], dec_out[k] = erfa.c2s(back)
    return np.degrees(ra_out) % 360, np.degrees(dec_out)


def beam_power(catalog: Catalog, pointing_ra: np.ndarray, pointing_dec, freqs_hz, dish_m: float) -> np.ndarray:
    """(sources, times, freqs) primary-beam power toward each source (pointing per time)."""
    dec_p = np.broadcast_to(np.asarray(pointing_dec, dtype=float), np.shape(pointing_ra))
    sep = angular_separation(catalog.ra_deg[:, None], catalog.dec_deg[:, None], pointing_ra[None, :], dec_p[None, :])
    return airy_power(sep[:, :, None], np.asarray(freqs_hz)[None, None, :], dish_m)


@dataclass
class FieldModel:
    """The sources chosen for one field, with their apparent fluxes (Jy) per time and channel."""

    catalog: Catalog
    ra0_deg: float
    dec0_deg: float
    times_mjd: np.ndarray
    freqs_hz: np.ndarray
    apparent: np.ndarray  # (sources, times, freqs)

    def beam_weighted_flux(self) -> np.ndarray:
        """Per source: sum S A / sum A over time and frequency, what a PB-corrected image measures."""
        beam = self.apparent / np.maximum(self.catalog.flux_at(self.freqs_hz)[:, None, :], 1e-30)
        return self.apparent.sum(axis=(1, 2)) / np.maximum(beam.sum(axis=(1, 2)), 1e-30)


def select_sources(
    catalog: Catalog,
    ra0_deg: float,
    dec0_deg: float,
    times_mjd: np.ndarray,
    freqs_hz: np.ndarray,
    location,
    settings: SkyModelSettings,
) -> FieldModel:
    """The brightest sources in the primary beam of this field (``location``: the array's EarthLocation)."""
    ra_p, dec_p = pointing_radec_deg(times_mjd, location, ra0_deg, dec0_deg, settings.pointing)
    # a cheap cut first: within 3 first nulls of the beam at the lowest frequency
    null = 1.22 * C_LIGHT / float(np.min(freqs_hz)) / settings.dish_diameter_m
    sep = angular_separation(catalog.ra_deg[:, None], catalog.dec_deg[:, None], ra_p[None, :], dec_p[None, :]).min(
        axis=1
    )
    near = catalog.subset(np.nonzero(sep < 3 * null)[0])
    if len(near) == 0:
        return FieldModel(near, ra0_deg, dec0_deg, times_mjd, freqs_hz, np.zeros((0, len(times_mjd), len(freqs_hz))))
    fmid = np.array([np.median(freqs_hz)])
    beam_mid = beam_power(near, ra_p, dec_p, fmid, settings.dish_diameter_m)[:, :, 0].mean(axis=1)
    apparent_mid = near.flux_at(fmid)[:, 0] * beam_mid
    keep = np.nonzero((beam_mid >= settings.min_beam) & (apparent_mid >= settings.min_apparent_jy))[0]
    keep = keep[np.argsort(apparent_mid[keep])[::-1][: settings.max_sources]]
    chosen = near.subset(keep)
    apparent = (
        beam_power(chosen, ra_p, dec_p, freqs_hz, settings.dish_diameter_m) * chosen.flux_at(freqs_hz)[:, None, :]
    )
    return FieldModel(chosen, ra0_deg, dec0_deg, np.asarray(times_mjd), np.asarray(freqs_hz), apparent)


def _predict_kernel():
    import numba

    @numba.njit(cache=True, nogil=True, fastmath=True)  # parallel across units (Dask threads), not inside
    def kernel(uvw, time_index, freqs, l_, m_, n1, apparent, out):  # pragma: no cover - compiled
        """apparent: (times, chans, sources). Sources innermost: independent phasors, a vectorisable sum."""
        nrow, nchan = out.shape
        nsrc = l_.shape[0]
        df = freqs[1] - freqs[0] if nchan > 1 else 0.0
        uniform = True
        for c in range(1, nchan):
            if abs(freqs[c] - freqs[c - 1] - df) > 1e-3 * abs(df) + 1e-6:
                uniform = False
        rot = np.empty(nsrc, dtype=np.complex128)
        step = np.empty(nsrc, dtype=np.complex128)
        delay = np.empty(nsrc)
        for r in range(nrow):
            t = time_index[r]
            for s in range(nsrc):
                delay[s] = 2.0 * np.pi * (uvw[r, 0] * l_[s] + uvw[r, 1] * m_[s] + uvw[r, 2] * n1[s]) / 299_792_458.0
                ph = delay[s] * freqs[0]
                rot[s] = complex(np.cos(ph), np.sin(ph))
                step[s] = complex(np.cos(delay[s] * df), np.sin(delay[s] * df))
            for c in range(nchan):
                acc = 0j
                if uniform:
                    for s in range(nsrc):
                        acc += apparent[t, c, s] * rot[s]
                        rot[s] *= step[s]
                else:
                    for s in range(nsrc):
                        ph = delay[s] * freqs[c]
                        acc += apparent[t, c, s] * complex(np.cos(ph), np.sin(ph))
                out[r, c] = acc

    return kernel


_KERNEL = None


def predict(model: FieldModel, uvw: np.ndarray, time_index: np.ndarray, freqs_hz: np.ndarray) -> np.ndarray:
    """(rows, channels) complex model visibilities of Stokes I for rows with MS ``UVW`` (m).

    ``time_index`` maps each row onto ``model.times_mjd``; ``freqs_hz`` must be a subset of the
    model's frequencies or the same (the apparent fluxes are interpolated otherwise).
    """
    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _predict_kernel()
    out = np.zeros((len(uvw), len(freqs_hz)), dtype=np.complex128)
    if len(model.catalog) == 0:
        return out.astype(np.complex64)
    l_, m_, n_ = lmn(model.catalog.ra_deg, model.catalog.dec_deg, model.ra0_deg, model.dec0_deg)
    if np.array_equal(freqs_hz, model.freqs_hz):
        apparent = model.apparent
    else:
        apparent = np.stack([np.stack([np.interp(freqs_hz, model.freqs_hz, a) for a in src]) for src in model.apparent])
    _KERNEL(
        np.ascontiguousarray(uvw, dtype=np.float64),
        np.ascontiguousarray(time_index, dtype=np.int64),
        np.ascontiguousarray(freqs_hz, dtype=np.float64),
        l_,
        m_,
        n_ - 1.0,
        np.ascontiguousarray(np.transpose(apparent, (1, 2, 0)), dtype=np.float64),
        out,
    )
    return out.astype(np.complex64)
