"""A small simulated group for the calibration and imaging tests (built with pyuvdata, independent of labpipe).

Visibilities are computed here by a direct Fourier sum in pyuvdata's convention (exp(+2 pi i u.l)), corrupted with
per-antenna delays, bandpasses and time-variable gains in pyuvdata's convention
(V_ij = g_i conj(g_j) V), noise added, and written with ``UVData.write_ms`` (which conjugates into the
MS convention: so the gains a CASA-convention solver must find are conj(g)). Not a test module:
tests import it by path (``load_calgroup()``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

C = 299_792_458.0
LAT, LON, HEIGHT = 37.2314, -118.2817, 1222.0


@dataclass
class SimGroup:
    ms: Path
    catalog: Path
    delays_s: np.ndarray  # (pols, ants), pyuvdata convention exp(-2 pi i tau nu)
    bandpass: np.ndarray  # (chans, pols, ants)
    gains: np.ndarray  # (times, pols, ants)
    freqs: np.ndarray
    times_mjd: np.ndarray
    noise_jy: float
    ra0: float
    dec0: float
    sources: list[dict]

    def total_gain_ms(self) -> np.ndarray:
        """(times, chans, pols, ants) the full corruption in MS (CASA) convention."""
        k = np.exp(-2j * np.pi * self.delays_s[None] * self.freqs[:, None, None])
        g = k[None] * self.bandpass[None] * self.gains[:, None]
        return np.conj(g)


def _airy(theta, freq, dish=4.65):
    from scipy.special import j1

    x = np.pi * dish * np.sin(theta) * freq / C
    x = np.where(np.abs(x) < 1e-9, 1e-9, x)
    return (2 * j1(x) / x) ** 2


def simulate_group(
    folder: Path,
    *,
    n_ant: int = 16,
    max_baseline_m: float = 300.0,
    n_chan: int = 32,
    n_time: int = 6,
    n_spw: int = 1,
    noise_jy: float = 0.05,
    seed: int = 7,
    gains: bool = True,
    gain_seed: int | None = None,
    dead_antenna: int | None = None,
    start_jd: float = 2460962.0,
    name: str = "group",
) -> SimGroup:
    """Write ``folder/<name>.ms`` and ``folder/catalog.csv`` and return the truth.

    ``gain_seed``: draw the time-variable gains from their own seed, so two groups of one ``seed`` share the
    array, the delays and the bandpass (an instrument's) but not the gains (a calibrator and a later target).
    """
    import astropy.units as u
    from astropy.coordinates import EarthLocation
    from astropy.time import Time
    from pyuvdata import Telescope, UVData

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    loc = EarthLocation.from_geodetic(LON * u.deg, LAT * u.deg, HEIGHT * u.m)
    # a compact random 2-D array: a well-behaved PSF from few antennas and a short group
    east = rng.uniform(-max_baseline_m / 2, max_baseline_m / 2, n_ant)
    north = rng.uniform(-max_baseline_m / 2, max_baseline_m / 2, n_ant)
    enu = np.stack([east, north, np.zeros(n_ant)], axis=1)
    from pyuvdata.utils import ECEF_from_ENU

    ecef = ECEF_from_ENU(enu, center_loc=loc)
    xyz = np.array(loc.geocentric).T.squeeze() if False else np.array([c.to_value("m") for c in loc.geocentric])
    names = [f"DSA-{i + 1:03d}" for i in range(n_ant)]
    tel = Telescope.new(
        name="DSA_110", location=loc, antenna_positions=ecef - xyz, antenna_names=names,
        antenna_numbers=np.arange(n_ant), instrument="DSA_110", antenna_diameters=np.full(n_ant, 4.65),
        feeds=["x", "y"], feed_angle=[np.pi / 2, 0], mount_type="fixed",
    )  # fmt: skip
    dt = 12.884902
    times_jd = start_jd + (np.arange(n_time) * dt) / 86400.0
    width = 244_140.625 * 4
    freqs = 1.35e9 + width * np.arange(n_chan * n_spw)
    lst_mid = Time(times_jd.mean(), format="jd", location=loc).sidereal_time("mean").deg
    ra0, dec0 = float(lst_mid), 45.0
    antpairs = [(i, j) for i in range(n_ant) for j in range(i, n_ant)]
    kwargs = {"flex_spw_id_array": np.repeat(np.arange(n_spw), n_chan)} if n_spw > 1 else {}
    uvd = UVData.new(
        freq_array=freqs, polarization_array=["xx", "yy"], times=times_jd, telescope=tel, antpairs=antpairs,
        do_blt_outer=True, integration_time=dt, channel_width=width, empty=True, vis_units="Jy",
        phase_center_catalog={0: {"cat_name": "field", "cat_type": "sidereal", "cat_lon": np.radians(ra0),
                                        "cat_lat": np.radians(dec0), "cat_frame": "icrs", "cat_epoch": 2000.0}},
        **kwargs,
    )  # fmt: skip
    # sources: a bright one near the centre and others across the beam; faint ones in the catalog too
    offsets = [
        (0.25, 0.15, 6.0),
        (-0.9, 0.5, 3.0),
        (0.6, -1.1, 2.5),
        (1.4, 0.9, 2.0),
        (-0.4, -1.6, 1.5),
        (-1.5, -0.3, 1.8),
    ]
    sources = []
    for k, (dra, ddec, s) in enumerate(offsets):
        dec = dec0 + ddec
        sources.append(dict(name=f"S{k}", ra_deg=(ra0 + dra / np.cos(np.radians(dec))) % 360, dec_deg=dec,
                            flux_jy=s, spectral_index=-0.7))  # fmt: skip
    for k in range(20):
        sources.append(dict(name=f"F{k}", ra_deg=(ra0 + rng.uniform(-8, 8)) % 360, dec_deg=dec0 + rng.uniform(-6, 6),
                            flux_jy=float(rng.uniform(0.005, 0.03)), spectral_index=-0.7))  # fmt: skip
    catalog = folder / "catalog.csv"
    with open(catalog, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(sources[0]))
        writer.writeheader()
        writer.writerows(sources)
    # pyuvdata convention: V = sum S A exp(+2 pi i (u l + v m + w (n - 1)) / lambda) with its uvw (CASA's ft agrees)
    # a transit dish: hour angle 0 at the field's of-date declination, each time, back in ICRS
    from astropy.coordinates import HADec, SkyCoord

    when = Time(times_jd, format="jd")
    dec_app = (
        SkyCoord(ra=ra0 * u.deg, dec=dec0 * u.deg).transform_to(HADec(obstime=when[len(when) // 2], location=loc)).dec
    )
    point = SkyCoord(ha=np.zeros(len(when)) * u.deg, dec=np.full(len(when), dec_app.deg) * u.deg,
                     frame=HADec(obstime=when, location=loc)).transform_to("icrs")  # fmt: skip
    pra, pdec = point.ra.rad, point.dec.rad
    uvw = uvd.uvw_array
    tidx = np.searchsorted(times_jd, uvd.time_array - 1e-9)
    vis = np.zeros((uvd.Nblts, len(freqs)), dtype=np.complex128)
    ra0r, dec0r = np.radians(ra0), np.radians(dec0)
    for s in sources:
        ra, dec = np.radians(s["ra_deg"]), np.radians(s["dec_deg"])
        l_ = np.cos(dec) * np.sin(ra - ra0r)
        m_ = np.sin(dec) * np.cos(dec0r) - np.cos(dec) * np.sin(dec0r) * np.cos(ra - ra0r)
        n_ = np.sin(dec) * np.sin(dec0r) + np.cos(dec) * np.cos(dec0r) * np.cos(ra - ra0r)
        cos_sep = np.sin(dec) * np.sin(pdec) + np.cos(dec) * np.cos(pdec) * np.cos(ra - pra)
        theta = np.arccos(np.clip(cos_sep, -1, 1))
        beam = _airy(theta[:, None], freqs[None])  # (times, chans)
        flux = s["flux_jy"] * (freqs / 1.4e9) ** s["spectral_index"]
        phase = 2j * np.pi * (uvw[:, 0] * l_ + uvw[:, 1] * m_ + uvw[:, 2] * (n_ - 1))[:, None] * freqs[None] / C
        vis += beam[tidx] * flux[None] * np.exp(phase)
    delays = rng.normal(0, 5e-9, (2, n_ant))
    chan = np.linspace(-1, 1, len(freqs))
    bp = (1 + 0.1 * rng.normal(size=(1, 2, n_ant)) * chan[:, None, None] ** 2) * np.exp(
        1j * 0.3 * rng.normal(size=(1, 2, n_ant)) * chan[:, None, None]
    )
    gain_rng = rng if gain_seed is None else np.random.default_rng(gain_seed)
    amp0 = gain_rng.uniform(0.8, 1.2, (1, 2, n_ant))
    ph0 = gain_rng.uniform(-np.pi, np.pi, (1, 2, n_ant))
    drift = gain_rng.normal(0, 0.05, (1, 2, n_ant)) * np.arange(n_time)[:, None, None]
    g = amp0 * np.exp(1j * (ph0 + drift))
    if not gains:
        delays[:] = 0
        bp[:] = 1
        g[:] = 1
    total = np.exp(-2j * np.pi * delays[None] * freqs[:, None, None]) * bp  # (chans, pols, ants)
    data = np.zeros((uvd.Nblts, len(freqs), 2), dtype=np.complex128)
    a1, a2 = uvd.ant_1_array, uvd.ant_2_array
    for p in range(2):
        gi = g[tidx, p][np.arange(uvd.Nblts), a1][:, None] * total[:, p, a1].T
        gj = g[tidx, p][np.arange(uvd.Nblts), a2][:, None] * total[:, p, a2].T
        data[:, :, p] = gi * np.conj(gj) * vis
    noise = noise_jy / np.sqrt(2) * (rng.normal(size=data.shape) + 1j * rng.normal(size=data.shape))
    cross = a1 != a2
    data[cross] += noise[cross]
    auto = ~cross
    data[auto] = np.abs(data[auto])
    uvd.data_array = data.astype(np.complex64)
    uvd.flag_array = np.zeros(data.shape, dtype=bool)
    if dead_antenna is not None:
        dead = (a1 == dead_antenna) | (a2 == dead_antenna)
        uvd.data_array[dead] = 0
        uvd.flag_array[dead] = True
    uvd.nsample_array = np.ones(data.shape, dtype=np.float32)
    ms = folder / f"{name}.ms"
    uvd.write_ms(str(ms), clobber=True)
    return SimGroup(ms, catalog, delays, bp, g, freqs, (times_jd - 2400000.5), noise_jy, ra0, dec0, sources)
