"""A simulated DSA-110: UVH5 subband files written with pyuvdata exactly as the instrument does.

Stable API (the calibration/imaging lifecycle builds on it; keep the signatures)::

    simulate_group(out_dir, start=None, *, n_antennas=96, pointing_dec_deg=None, calibrator=None,
                   catalog=None, corruptions=Corruptions(), noise=True, sefd_jy=5800.0,
                   jitter_s=0.0, missing_subbands=(), corrupt_subbands=None, truth_dir=None,
                   n_times=24, n_channels=48, data_dtype="complex128", seed=0) -> SimulatedGroup
    simulate_stream(out_dir, n_groups, *, start=None, interval_s=0.0, faults=None, **group_options)
        -> list[SimulatedGroup]
    transit_start(ra_deg, day=None) -> datetime   # group start with ``ra_deg`` transiting at mid-group
    nvss_like_catalog(ra_range_deg, dec_range_deg, *, min_flux_jy=0.05, seed=0) -> list[Source]
    write_catalog(sources, path) / read_sources(path)  # CSV: name, ra_deg, dec_deg, flux_jy,
                                                       #      spectral_index, ref_freq_hz
    Corruptions(seed=..., ...).evaluate(n_antennas, times_jd, freqs_hz) -> (gains, delays_ns, bandpass)
    load_truth(path) -> Truth                            # the .npz written beside each group
    find_truth(truth_dir, time_jd) -> Path | None         # the truth of the group covering a time
    Truth.jones() -> (antennas, times, freqs, pols) complex

CLI: ``labpipe radio simulate OUT_DIR [--groups N] [--antennas N] [--calibrator 3C286] [--dec DEG]
[--jitter S] [--missing 3,7] [--corrupt 5:truncate] [--interval S] [--no-corruptions] [--no-noise]
[--small-files] [--seed N]``.

What a group is: 16 files ``YYYY-MM-DDTHH:MM:SS_sbNN.hdf5``; sb00 is the top of the band and channels
descend within each file (``instrument.subband_frequencies``); 24 integrations of 12.884902 s; XX and
YY; cross and auto correlations of ``n_antennas`` antennas (``instrument.antenna_layout``); data
unprojected (drift scan; pyuvdata ``cat_type="unprojected"``) with the pointing declination in
``extra_keywords["phase_center_dec"]`` (radians), as DSA-110 files carry it. File names carry the
group start, plus ``jitter_s`` of per-subband jitter; the times inside the files are exact.

Sky: point sources (the catalog, beam-weighted by the Airy power of a 4.65 m dish pointed at the
meridian at the pointing declination) plus, on autocorrelations, the system temperature (SEFD), plus
thermal noise of sigma = SEFD / sqrt(2 dnu dt) per real and imaginary part.

Corruptions and conventions. Per antenna a, polarization p, time t, frequency f:
``J_a = gains[a, t, p] * bandpass[a, f, p] * exp(-2j pi f delays_ns[a, p] 1e-9)``. In the Measurement
Set labpipe writes (CASA conjugation, as pyuvdata's ``write_ms``): ``DATA[ant1, ant2] = J_ant1 *
MODEL[ant1, ant2] * conj(J_ant2)``, with MODEL_pq = sum_s S_s B_s exp(+2j pi (u l + v m + w (n - 1))
/ lambda) for the MS ``UVW`` (u, v, w) and l towards east: the conjugate of pyuvdata's own convention
(data ``exp(-2j pi ...)`` with ``uvw = -UVW``). The truth ``.npz`` holds gains over the group's times,
delays, the bandpass on the ascending band of the MS, and the sources simulated.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.radio import instrument as inst
from labpipe.radio.calibrators import DEFAULT_CALIBRATORS, Calibrator
from labpipe.radio.naming import group_id, subband_file_name

CorruptKind = Literal["truncate", "garbage", "wrong_shape"]
REF_FREQ_HZ = 1.4e9
TRUTH_CONVENTION = "MS: DATA_pq = J_p MODEL_pq conj(J_q); J = gains * bandpass * exp(-2j pi f tau)"


# --- sky -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A point source: J2000 position (deg), flux at ``ref_freq_hz`` (Jy) and spectral index."""

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    spectral_index: float = -0.7
    ref_freq_hz: float = REF_FREQ_HZ
    lightcurve: tuple[tuple[float, float], ...] = ()  # (mjd, flux scale) pairs; empty: steady

    def __post_init__(self):
        # truth files hand the pairs back as JSON lists; keep the dataclass hashable and comparable
        object.__setattr__(self, "lightcurve", tuple((float(t), float(s)) for t, s in self.lightcurve))

    def flux_scale(self, mjd: float | np.ndarray) -> float | np.ndarray:
        """The flux at ``mjd`` over ``flux_jy`` (linear between the light curve's points, held outside)."""
        if not self.lightcurve:
            return np.ones_like(np.asarray(mjd, dtype=float)) if np.ndim(mjd) else 1.0
        times, scales = np.array(self.lightcurve).T
        value = np.interp(mjd, times, scales)
        return value if np.ndim(mjd) else float(value)


def nvss_like_catalog(
    ra_range_deg: tuple[float, float],
    dec_range_deg: tuple[float, float],
    *,
    min_flux_jy: float = 0.05,
    density_per_deg2_above_min: float | None = None,
    seed: int = 0,
) -> list[Source]:
    """Random point sources with NVSS-like counts, N(>S) ~ 53 deg^-2 (S / 2.5 mJy)^-1, alpha ~ N(-0.7, 0.2)."""
    rng = np.random.default_rng(seed)
    ra0, ra1 = ra_range_deg
    dec0, dec1 = sorted(dec_range_deg)
    dec0, dec1 = max(dec0, -89.9), min(dec1, 89.9)
    if ra1 < ra0:
        ra1 += 360.0
    solid_deg2 = np.degrees(np.radians(ra1 - ra0)) * np.degrees(np.sin(np.radians(dec1)) - np.sin(np.radians(dec0)))
    density = density_per_deg2_above_min or 53.0 * (min_flux_jy / 2.5e-3) ** -1.0
    n = rng.poisson(density * solid_deg2)
    ra = (rng.uniform(ra0, ra1, n)) % 360.0
    dec = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(dec0)), np.sin(np.radians(dec1)), n)))
    flux = min_flux_jy / rng.uniform(0.0, 1.0, n).clip(1e-4)  # N(>S) ~ S^-1
    alpha = rng.normal(-0.7, 0.2, n)
    return [
        Source(_nvss_name(r, d), float(r), float(d), float(s), float(a))
        for r, d, s, a in zip(ra, dec, flux, alpha, strict=True)
    ]


def _nvss_name(ra: float, dec: float) -> str:
    h, d = ra / 15.0, abs(dec)
    hms = f"{int(h):02d}{int(h * 60) % 60:02d}{(h * 3600) % 60:04.1f}"
    dms = f"{int(d):02d}{int(d * 60) % 60:02d}{int(d * 3600) % 60:02d}"
    return f"J{hms}{'+' if dec >= 0 else '-'}{dms}"


def write_catalog(sources: list[Source], path: Path) -> Path:
    """Write sources as CSV (name, ra_deg, dec_deg, flux_jy, spectral_index, ref_freq_hz)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "ra_deg", "dec_deg", "flux_jy", "spectral_index", "ref_freq_hz"])
        for s in sources:
            writer.writerow(
                [
                    s.name,
                    f"{s.ra_deg:.6f}",
                    f"{s.dec_deg:.6f}",
                    f"{s.flux_jy:.6g}",
                    f"{s.spectral_index:.3f}",
                    s.ref_freq_hz,
                ]
            )
    os.replace(tmp, path)
    return path


def read_sources(path: Path) -> list[Source]:
    """Sources from a catalog CSV (columns as ``write_catalog``; spectral index and ref freq optional)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [
            Source(
                r.get("name") or f"src{i}",
                float(r["ra_deg"]),
                float(r["dec_deg"]),
                float(r["flux_jy"]),
                float(r.get("spectral_index") or -0.7),
                float(r.get("ref_freq_hz") or REF_FREQ_HZ),
            )
            for i, r in enumerate(rows)
        ]
    except (OSError, KeyError, ValueError) as exc:
        raise InvalidInput(
            path, f"not a source catalog ({exc})", "expected CSV columns ra_deg, dec_deg, flux_jy"
        ) from exc


def calibrator_source(calibrator: Calibrator) -> Source:
    return Source(calibrator.name, calibrator.ra_deg, calibrator.dec_deg, calibrator.flux_jy, calibrator.spectral_index)


def find_calibrator(name: str, calibrators=DEFAULT_CALIBRATORS) -> Calibrator:
    for c in calibrators:
        if c.name.lower() == name.lower():
            return c
    raise InvalidInput(name, "unknown calibrator", f"choose one of {', '.join(c.name for c in calibrators)}")


# --- instrument errors -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Corruptions:
    """Per-antenna complex gains, delays and bandpasses of a stable instrument (same seed = same instrument).

    Gains drift slowly with absolute time (amplitude wobble with periods of hours, phase drift), so
    groups simulated hours apart have consistent truths, as the 24 h bandpass / 1 h gain cadence
    of calibration expects. ``enabled=False`` gives unit Jones matrices.
    """

    enabled: bool = True
    seed: int = 1
    gain_amp_rms: float = 0.1
    gain_amp_wobble: float = 0.03
    gain_phase_drift_deg_per_hour: float = 15.0
    delay_rms_ns: float = 1.5
    bandpass_ripple: float = 0.08
    bandpass_phase_deg: float = 5.0

    def evaluate(self, n_antennas: int, times_jd: np.ndarray, freqs_hz: np.ndarray):
        """``(gains (ant, time, pol), delays_ns (ant, pol), bandpass (ant, freq, pol))`` for these times and freqs."""
        times_jd, freqs_hz = np.asarray(times_jd, float), np.asarray(freqs_hz, float)
        npol = len(inst.POLARIZATIONS)
        if not self.enabled:
            return (
                np.ones((n_antennas, len(times_jd), npol), complex),
                np.zeros((n_antennas, npol)),
                np.ones((n_antennas, len(freqs_hz), npol), complex),
            )
        rng = np.random.default_rng(self.seed)
        shape = (n_antennas, npol)
        amp0 = 1.0 + self.gain_amp_rms * rng.standard_normal(shape)
        phase0 = rng.uniform(-np.pi, np.pi, shape)
        rate = np.radians(self.gain_phase_drift_deg_per_hour) * rng.standard_normal(shape) * 24.0  # rad/day
        period = rng.uniform(3.0, 9.0, shape) / 24.0  # days
        wobble_phase = rng.uniform(0, 2 * np.pi, shape)
        delays = self.delay_rms_ns * rng.standard_normal(shape)
        t = (times_jd - 2460000.0)[None, :, None]  # days from a fixed epoch keeps numbers small
        amp = amp0[:, None, :] * (
            1 + self.gain_amp_wobble * np.sin(2 * np.pi * t / period[:, None, :] + wobble_phase[:, None, :])
        )
        gains = amp * np.exp(1j * (phase0[:, None, :] + rate[:, None, :] * t))
        # Bandpass: smooth ripples across the band times the roll-off of each 48-channel subband filter.
        x = (freqs_hz - inst.band_frequencies().mean()) / 100e6
        coeffs = rng.standard_normal((n_antennas, npol, 4))
        ripple = sum(coeffs[..., k, None] * np.cos((k + 1) * np.pi * x + k) for k in range(4))  # (ant, pol, freq)
        pcoef = rng.standard_normal((n_antennas, npol, 3))
        phase_ripple = sum(pcoef[..., k, None] * np.sin((k + 1) * 1.7 * np.pi * x) for k in range(3))
        offset = (inst.TOP_FREQ_HZ - freqs_hz) / inst.CHANNEL_WIDTH_HZ  # channel index in the band
        edge = (offset % inst.N_CHANNELS) / (inst.N_CHANNELS - 1) * 2 - 1  # -1..1 across each subband
        rolloff = 1 - 0.25 * edge**8
        bandpass = (
            (1 + self.bandpass_ripple * ripple / 2)
            * rolloff
            * np.exp(1j * np.radians(self.bandpass_phase_deg) * phase_ripple)
        )
        return gains, delays, np.transpose(bandpass, (0, 2, 1))


@dataclass(frozen=True)
class RfiInjection:
    """Radio-frequency interference added to a group, kept in the truth (same seed = same interference).

    - ``narrowband`` persistent emitters, each ``narrowband_width`` channels wide, on in every integration;
    - ``bursts`` broadband bursts, each in one integration over ``burst_span`` of the band;
    - one faulty input ``bad_antenna`` (an index into the group's antennas; None: none) whose
      cross-correlations carry extra noise of ``bad_antenna_noise`` times the thermal sigma.

    An emitter far away on the horizon reaches antenna a with a sidelobe coupling u_a (0.4-1) and a
    delay tau_a (up to the array's light-crossing time), so in the MS convention a baseline sees
    ``s(t, f) u_p u_q exp(2 pi i f (tau_p - tau_q))`` with s the emitter's amplitude (Jy) in that
    integration and channel: the same in both hands, and on the autocorrelations too (u_p^2 s).
    """

    seed: int = 11
    narrowband: int = 5
    narrowband_width: tuple[int, int] = (1, 3)
    narrowband_jy: tuple[float, float] = (10.0, 200.0)
    bursts: int = 2
    burst_jy: tuple[float, float] = (10.0, 100.0)
    burst_span: tuple[float, float] = (0.25, 1.0)
    bad_antenna: int | None = 3
    bad_antenna_noise: float = 3.0

    def evaluate(self, n_antennas: int, n_times: int, n_band_channels: int):
        """``(amplitude (times, band channels) Jy, coupling (ants,), delay_ns (ants,))`` of the emitters."""
        rng = np.random.default_rng(self.seed)
        amplitude = np.zeros((n_times, n_band_channels))
        for _ in range(self.narrowband):
            width = int(rng.integers(self.narrowband_width[0], self.narrowband_width[1] + 1))
            first = int(rng.integers(0, n_band_channels - width + 1))
            amplitude[:, first : first + width] += np.exp(rng.uniform(*np.log(self.narrowband_jy)))
        for _ in range(self.bursts):
            span = max(1, int(rng.uniform(*self.burst_span) * n_band_channels))
            first = int(rng.integers(0, n_band_channels - span + 1))
            when = int(rng.integers(0, n_times))
            amplitude[when, first : first + span] += np.exp(rng.uniform(*np.log(self.burst_jy)))
        coupling = rng.uniform(0.4, 1.0, n_antennas)
        delay_ns = rng.uniform(-4000.0, 4000.0, n_antennas)  # ~1.2 km arms: a few microseconds across
        return amplitude, coupling, delay_ns


def _add_rfi(data, freqs, cols, antpairs, amplitude, coupling, delay_ns, bad, bad_sigma, rng) -> None:
    """Add the emitters (and the faulty input's noise) to one subband's data, pyuvdata convention, in place."""
    i, j = antpairs[:, 0] - 1, antpairs[:, 1] - 1
    nbls = len(antpairs)
    # pyuvdata's convention is the conjugate of the MS one: u_p u_q exp(-2 pi i f (tau_p - tau_q))
    fringe = (coupling[i] * coupling[j])[:, None] * np.exp(
        -2j * np.pi * freqs[None, :] * (delay_ns[i] - delay_ns[j])[:, None] * 1e-9
    )
    for t in np.nonzero(amplitude[:, cols].any(axis=1))[0]:
        rows = slice(t * nbls, (t + 1) * nbls)
        data[rows] += (fringe * amplitude[t, cols][None, :])[:, :, None].astype(data.dtype)
    if bad is not None and bad_sigma > 0:
        hit = np.nonzero(((i == bad) | (j == bad)) & (i != j))[0]
        for t in range(len(data) // nbls):  # rows are time-major: nbls rows per integration
            sel = t * nbls + hit
            noise = rng.standard_normal((len(sel), data.shape[1], data.shape[2], 2)) * bad_sigma
            data[sel] += (noise[..., 0] + 1j * noise[..., 1]).astype(data.dtype)


@dataclass
class Truth:
    """What the simulator put into a group (see the module docstring for the convention)."""

    group_id: str
    antenna_numbers: np.ndarray
    antenna_names: np.ndarray
    enu_m: np.ndarray
    times_jd: np.ndarray  # integration centres
    freqs_hz: np.ndarray  # ascending, the MS channel order
    polarizations: np.ndarray
    gains: np.ndarray  # (ant, time, pol)
    delays_ns: np.ndarray  # (ant, pol)
    bandpass: np.ndarray  # (ant, freq, pol)
    pointing_dec_deg: float
    sources: list[Source]
    noise_sigma_jy: float
    sefd_jy: float
    convention: str = TRUTH_CONVENTION
    rfi_amplitude: np.ndarray | None = None  # (time, freq) Jy of the emitters before coupling; None: no RFI
    rfi_coupling: np.ndarray | None = None  # (ant,) sidelobe coupling u_a
    rfi_delay_ns: np.ndarray | None = None  # (ant,)
    bad_antenna: int = -1  # index into antenna_numbers of the faulty input (-1: none)
    bad_antenna_sigma_jy: float = 0.0  # extra noise per real and imaginary part on its cross-correlations

    def rfi_truth(self, ant1: np.ndarray, ant2: np.ndarray, time_index: np.ndarray, freqs_hz: np.ndarray):
        """For MS rows (antenna *numbers*, integration index) and channels: (injected amplitude Jy, bad input).

        Returns ``(rows, chans)`` float32 amplitude of the emitters on each sample and a ``(rows,)``
        bool that is True on the faulty input's cross-correlations.
        """
        index = {int(n): k for k, n in enumerate(self.antenna_numbers)}
        p = np.array([index.get(int(a), -1) for a in ant1])
        q = np.array([index.get(int(a), -1) for a in ant2])
        amplitude = np.zeros((len(ant1), len(freqs_hz)), np.float32)
        if self.rfi_amplitude is not None:
            cols = np.clip(np.searchsorted(self.freqs_hz, freqs_hz), 0, len(self.freqs_hz) - 1)
            coupling = self.rfi_coupling[p] * self.rfi_coupling[q]
            amplitude = (self.rfi_amplitude[np.asarray(time_index)][:, cols] * coupling[:, None]).astype(np.float32)
        bad = (p != q) & ((p == self.bad_antenna) | (q == self.bad_antenna)) & (self.bad_antenna >= 0)
        return amplitude, bad

    def jones(self) -> np.ndarray:
        """(ant, time, freq, pol) complex Jones terms J = gains * bandpass * exp(-2 pi i f tau)."""
        delay = np.exp(-2j * np.pi * self.freqs_hz[None, :, None] * self.delays_ns[:, None, :] * 1e-9)
        return self.gains[:, :, None, :] * (self.bandpass * delay)[:, None, :, :]


def save_truth(truth: Truth, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: v for k, v in asdict(truth).items() if isinstance(v, np.ndarray)}
    meta = dict(
        group_id=truth.group_id,
        pointing_dec_deg=truth.pointing_dec_deg,
        noise_sigma_jy=truth.noise_sigma_jy,
        sefd_jy=truth.sefd_jy,
        convention=truth.convention,
        sources=[asdict(s) for s in truth.sources],
        bad_antenna=truth.bad_antenna,
        bad_antenna_sigma_jy=truth.bad_antenna_sigma_jy,
    )
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)
    return path


def load_truth(path: Path) -> Truth:
    """The truth a ``simulate_group`` call wrote (``<truth_dir>/<group id>.npz``)."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        arrays = {k: data[k] for k in data.files if k != "meta"}
    sources = [Source(**s) for s in meta.pop("sources")]
    return Truth(sources=sources, **meta, **arrays)


# --- time helpers ----------------------------------------------------------------------------------


def _jd(when: dt.datetime) -> float:
    from astropy.time import Time

    return float(Time(when, scale="utc").jd)


def transit_start(ra_deg: float, day: dt.date | None = None) -> dt.datetime:
    """The start (whole second) of a group whose mid-time has J2000 RA ``ra_deg`` on the meridian, on ``day``."""
    import astropy.units as u
    from astropy.coordinates import HADec, SkyCoord
    from astropy.time import Time

    day = day or dt.date(2025, 10, 13)
    t = Time(dt.datetime.combine(day, dt.time(12)), scale="utc")
    coord = SkyCoord(ra=ra_deg * u.deg, dec=0 * u.deg, frame="icrs")
    for _ in range(3):  # Newton steps on the hour angle (sidereal rate)
        ha = coord.transform_to(HADec(obstime=t, location=inst.site_location())).ha.wrap_at(180 * u.deg).deg
        t = t - (ha / 360.0 / 1.0027379) * u.day
    start = t.to_datetime() - dt.timedelta(seconds=inst.GROUP_SECONDS / 2)
    return start.replace(microsecond=0)


# --- the group -------------------------------------------------------------------------------------


@dataclass
class SimulatedGroup:
    """Files of one simulated group and where its truth is."""

    group_id: str  # nominal start, the name a perfect instrument would give
    start: dt.datetime
    files: dict[int, Path] = field(default_factory=dict)  # subband -> file (missing ones absent)
    truth: Path | None = None
    catalog: Path | None = None
    pointing_dec_deg: float = 0.0
    calibrator: str | None = None
    corrupt: dict[int, str] = field(default_factory=dict)
    missing: tuple[int, ...] = ()


def _telescope(n_antennas: int):
    from pyuvdata import Telescope
    from pyuvdata.utils import ECEF_from_ENU

    numbers, names, enu = inst.antenna_layout(n_antennas)
    location = inst.site_location()
    ecef = ECEF_from_ENU(enu, center_loc=location)
    rel = ecef - np.array([location.x.value, location.y.value, location.z.value])
    return Telescope.new(
        name=inst.TELESCOPE_NAME,
        location=location,
        antenna_positions=rel,
        antenna_names=names,
        antenna_numbers=numbers,
        antenna_diameters=np.full(n_antennas, inst.DISH_DIAMETER_M),
        instrument="DSA-110",
        feeds=["x", "y"],
        mount_type="alt-az",
        update_from_known=False,
    ), enu


def _source_enu(sources: list[Source], times_jd: np.ndarray) -> np.ndarray:
    """(sources, times, 3) unit vectors towards each source in the local east-north-up frame."""
    import astropy.units as u
    from astropy.coordinates import AltAz, SkyCoord
    from astropy.time import Time

    coords = SkyCoord(ra=[s.ra_deg for s in sources] * u.deg, dec=[s.dec_deg for s in sources] * u.deg, frame="icrs")
    frame = AltAz(obstime=Time(times_jd, format="jd")[None, :], location=inst.site_location())
    altaz = coords[:, None].transform_to(frame)
    alt, az = altaz.alt.rad, altaz.az.rad
    return np.stack([np.cos(alt) * np.sin(az), np.cos(alt) * np.cos(az), np.sin(alt)], axis=-1)


def _beam(enu_dirs: np.ndarray, pointing_dec_deg: float, freqs_hz: np.ndarray) -> np.ndarray:
    """(sources, times, freqs) primary beam power for a dish on the meridian at ``pointing_dec_deg``."""
    alt, az = np.radians(inst.pointing_altaz_deg(pointing_dec_deg))
    point = np.array([np.cos(alt) * np.sin(az), np.cos(alt) * np.cos(az), np.sin(alt)])
    theta = np.arccos(np.clip(enu_dirs @ point, -1, 1))
    return inst.airy_power(theta[..., None], freqs_hz[None, None, :]) * (enu_dirs[..., 2:3] > 0)


def _visible_sources(sources, pointing_dec_deg, mid_jd, min_apparent_jy: float) -> list[Source]:
    if not sources:
        return []
    dirs = _source_enu(sources, np.array([mid_jd]))
    beam = _beam(dirs, pointing_dec_deg, np.array([REF_FREQ_HZ]))[:, 0, 0]
    apparent = np.array([s.flux_jy for s in sources]) * beam
    return [s for s, a in zip(sources, apparent, strict=True) if a >= min_apparent_jy]


def _subband_visibilities(
    enu: np.ndarray,
    src_dirs: np.ndarray,
    src_flux: np.ndarray,
    beam: np.ndarray,
    freqs: np.ndarray,
    antpairs: np.ndarray,
    jones: np.ndarray,
    sefd_jy: float,
    sigma: float,
    rng: np.random.Generator,
    dtype,
) -> np.ndarray:
    """(blts, freqs, pols) visibilities in pyuvdata's convention for one subband, time-major blt order."""
    n_times = src_dirs.shape[1]
    npol = jones.shape[-1]
    i, j = antpairs[:, 0] - 1, antpairs[:, 1] - 1
    nbls = len(antpairs)
    out = np.empty((n_times * nbls, len(freqs), npol), dtype=dtype)
    autos = i == j
    for t in range(n_times):
        # Antenna-based factoring: V_ij = sum_s conj(A_si) S_s B_s A_sj with A_sa = exp(2 pi i f x_a.s / c).
        geometric = src_dirs[:, t, :] @ enu.T  # (src, ant) metres
        a = np.exp(2j * np.pi * freqs[:, None, None] / inst.C_LIGHT * geometric[None])  # (freq, src, ant)
        weight = src_flux * beam[:, t, :].T  # (freq, src)
        sky = np.conj(a).transpose(0, 2, 1) @ (weight[:, :, None] * a)  # (freq, ant, ant)
        vis = sky[:, i, j].T  # (bl, freq)
        rows = slice(t * nbls, (t + 1) * nbls)
        for p in range(npol):
            v = vis.copy()
            v[autos] += sefd_jy
            if sigma > 0:
                noise = rng.standard_normal((nbls, len(freqs), 2)) * sigma
                v += noise[..., 0] + 1j * noise[..., 1]
                v[autos] = v[autos].real + 0j  # autocorrelations are real
            jt = jones[:, t, :, p]  # (ant, freq)
            v = np.conj(jt[i]) * v * jt[j]  # pyuvdata convention = conjugate of the MS one
            v[autos] = v[autos].real
            out[rows, :, p] = v
    return out


def _write_uvh5(uv, path: Path) -> None:
    """Write beside the final name and rename: a watcher never sees half a simulated file."""
    tmp = path.with_name(f".{path.name}.writing")
    uv.write_uvh5(str(tmp), clobber=True, run_check=False)
    os.replace(tmp, path)


def _corrupt_file(path: Path, kind: str, rng: np.random.Generator) -> None:
    if kind == "truncate":
        with open(path, "r+b") as handle:
            handle.truncate(path.stat().st_size * 2 // 5)
    elif kind == "garbage":
        with open(path, "r+b") as handle:
            handle.write(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind != "wrong_shape":
        raise ValueError(f"unknown corruption {kind!r}; expected truncate, garbage or wrong_shape")


def simulate_group(
    out_dir: Path,
    start: dt.datetime | str | None = None,
    *,
    n_antennas: int = inst.N_ANTENNAS,
    pointing_dec_deg: float | None = None,
    calibrator: str | Calibrator | None = None,
    catalog: Path | list[Source] | None = None,
    corruptions: Corruptions | None = None,
    noise: bool = True,
    sefd_jy: float = 5800.0,
    jitter_s: float = 0.0,
    missing_subbands: tuple[int, ...] | list[int] = (),
    corrupt_subbands: Mapping[int, CorruptKind] | None = None,
    truth_dir: Path | None = None,
    n_times: int = inst.N_INTEGRATIONS,
    n_channels: int = inst.N_CHANNELS,
    data_dtype: str = "complex128",
    min_apparent_jy: float = 0.005,
    seed: int = 0,
    on_file: Callable[[Path], None] | None = None,
    rfi: RfiInjection | None = None,
) -> SimulatedGroup:
    """Write one group of 16 subband UVH5 files into ``out_dir`` and its truth into ``truth_dir``.

    ``start``: group start (UTC; default: ``calibrator``'s transit, else 2025-10-13T13:28:03).
    ``calibrator``: a name from the calibrator list, added to the sky, transiting at mid-group,
    pointing at its declination. ``pointing_dec_deg``: default the calibrator's or 55 deg.
    ``catalog``: a CSV or sources; default an NVSS-like field written to ``truth_dir/catalog.csv``.
    ``jitter_s``: file-name timestamps jitter uniformly by up to +-jitter_s per subband.
    ``corrupt_subbands``: {subband: "truncate" | "garbage" | "wrong_shape" (40 channels)}.
    ``data_dtype``: "complex128" gives DSA-110-size files (~183 MB at 96 antennas), "complex64" half.
    ``on_file`` is called with each file once it is in place.
    ``rfi``: interference to add (``RfiInjection``; its amplitudes and the faulty input go to the truth).
    A source's ``lightcurve`` scales its flux to its value at the group's mid-time.
    """
    from pyuvdata import UVData

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    truth_dir = Path(truth_dir) if truth_dir else out_dir / "truth"
    rng = np.random.default_rng(seed)
    cal = find_calibrator(calibrator) if isinstance(calibrator, str) else calibrator
    if start is None:
        start = transit_start(cal.ra_deg) if cal else dt.datetime(2025, 10, 13, 13, 28, 3)
    elif isinstance(start, str):
        start = dt.datetime.fromisoformat(start)
    start = start.replace(microsecond=0, tzinfo=None)
    dec = pointing_dec_deg if pointing_dec_deg is not None else (cal.dec_deg if cal else 55.0)
    corruptions = corruptions or Corruptions()
    corrupt_subbands = dict(corrupt_subbands or {})

    start_jd = _jd(start)
    times = start_jd + (np.arange(n_times) + 0.5) * inst.INTEGRATION_S / 86400.0
    mid_jd = float(times.mean())
    if isinstance(catalog, list):
        sources = list(catalog)
        catalog_path = None
    elif catalog is not None:
        sources, catalog_path = read_sources(Path(catalog)), Path(catalog)
    else:
        from astropy.time import Time

        lst = Time(mid_jd, format="jd").sidereal_time("apparent", inst.SITE_LON_DEG).deg
        sources = nvss_like_catalog((lst - 8, lst + 8), (dec - 6, dec + 6), seed=seed + 1000)
        catalog_path = write_catalog(sources, truth_dir / f"{group_id(start).replace(':', '')}_catalog.csv")
    if cal and not any(s.name == cal.name for s in sources):
        sources.append(calibrator_source(cal))
    sky = _visible_sources(sources, dec, mid_jd, min_apparent_jy)

    telescope, enu = _telescope(n_antennas)
    numbers = telescope.antenna_numbers
    antpairs = np.array([(a, b) for k, a in enumerate(numbers) for b in numbers[k:]])
    band = inst.band_frequencies(n_channels=n_channels)
    gains, delays, bandpass = corruptions.evaluate(n_antennas, times, band)
    thermal = sefd_jy / np.sqrt(2 * inst.CHANNEL_WIDTH_HZ * inst.INTEGRATION_S)
    sigma = thermal if noise else 0.0
    rfi_amplitude = rfi_coupling = rfi_delay = None
    bad = rfi.bad_antenna if rfi is not None and rfi.bad_antenna is not None else None
    if rfi is not None:
        rfi_amplitude, rfi_coupling, rfi_delay = rfi.evaluate(n_antennas, n_times, len(band))
        rfi_rng = np.random.default_rng(rfi.seed + 1)
    src_dirs = _source_enu(sky, times) if sky else np.zeros((0, n_times, 3))  # (src, time, 3)
    mid_mjd = mid_jd - 2400000.5
    flux_ref = np.array([s.flux_jy * s.flux_scale(mid_mjd) for s in sky])
    alpha = np.array([s.spectral_index for s in sky])
    ref = np.array([s.ref_freq_hz for s in sky])

    group = SimulatedGroup(
        group_id(start),
        start,
        pointing_dec_deg=dec,
        calibrator=cal.name if cal else None,
        corrupt=dict(corrupt_subbands),
        missing=tuple(sorted(missing_subbands)),
        catalog=catalog_path,
    )
    for sb in range(inst.N_SUBBANDS):
        if sb in group.missing:
            continue
        shape_fault = corrupt_subbands.get(sb) == "wrong_shape"
        freqs = inst.subband_frequencies(sb, n_channels)[: 40 if shape_fault else n_channels]
        cols = np.searchsorted(band, freqs)
        delay_phase = np.exp(-2j * np.pi * freqs[None, :, None] * delays[:, None, :] * 1e-9)
        jones = gains[:, :, None, :] * (bandpass[:, cols, :] * delay_phase)[:, None, :, :]  # (ant, time, freq, pol)
        flux = flux_ref[:, None] * (freqs[None, :] / ref[:, None]) ** alpha[:, None]  # (src, freq)
        beam = _beam(src_dirs, dec, freqs)
        data = _subband_visibilities(
            enu, src_dirs, flux.T, beam, freqs, antpairs, jones, sefd_jy, sigma, rng, np.dtype(data_dtype)
        )
        if rfi is not None:
            _add_rfi(data, freqs, cols, antpairs, rfi_amplitude, rfi_coupling, rfi_delay, bad,
                     rfi.bad_antenna_noise * thermal, rfi_rng)  # fmt: skip
        uv = UVData.new(
            freq_array=freqs,
            polarization_array=list(inst.POLARIZATIONS),
            times=times,
            telescope=telescope,
            antpairs=antpairs,
            do_blt_outer=True,
            time_axis_faster_than_bls=False,
            integration_time=inst.INTEGRATION_S,
            channel_width=inst.CHANNEL_WIDTH_HZ,
            data_array=data,
            flag_array=np.zeros(data.shape, bool),
            nsample_array=np.ones(data.shape, np.float32),
            vis_units="uncalib",
            history=f"labpipe DSA-110 simulator, seed {seed}",
            extra_keywords={"phase_center_dec": float(np.radians(dec))},
            update_telescope_from_known=False,
        )
        jitter = rng.uniform(-jitter_s, jitter_s) if jitter_s else 0.0
        stamp = start + dt.timedelta(seconds=round(jitter))
        path = out_dir / subband_file_name(stamp, sb)
        _write_uvh5(uv, path)
        del uv, data
        if sb in corrupt_subbands:
            _corrupt_file(path, corrupt_subbands[sb], rng)
        group.files[sb] = path
        if on_file:
            on_file(path)
    group.truth = save_truth(
        Truth(
            group_id=group.group_id,
            antenna_numbers=numbers,
            antenna_names=np.array(telescope.antenna_names),
            enu_m=enu,
            times_jd=times,
            freqs_hz=band,
            polarizations=np.array(inst.POLARIZATIONS),
            gains=gains,
            delays_ns=delays,
            bandpass=bandpass,
            pointing_dec_deg=dec,
            sources=sky,
            noise_sigma_jy=float(sigma),
            sefd_jy=sefd_jy,
            rfi_amplitude=rfi_amplitude,
            rfi_coupling=rfi_coupling,
            rfi_delay_ns=rfi_delay,
            bad_antenna=-1 if bad is None else int(bad),
            bad_antenna_sigma_jy=0.0 if bad is None else float(rfi.bad_antenna_noise * thermal),
        ),
        truth_dir / f"{group.group_id.replace(':', '')}.npz",
    )
    return group


def truth_path(truth_dir: Path, group: str) -> Path:
    """Where ``simulate_group`` put the truth of group ``group`` (its nominal id)."""
    return Path(truth_dir) / f"{group.replace(':', '')}.npz"


def stream_catalog(
    path: Path, start: dt.datetime, n_groups: int, dec_deg: float, *, seed: int = 0, calibrator=None
) -> Path:
    """One NVSS-like catalog covering every field a stream of ``n_groups`` from ``start`` sees, as CSV.

    A ``calibrator`` in the sky is in the catalog too, as the bright calibrators are in NVSS: a sky
    model without the field's brightest source would drag every gain towards the faint rest.
    """
    from astropy.time import Time

    times = Time([start + dt.timedelta(seconds=k * inst.GROUP_SECONDS) for k in (0, n_groups)], scale="utc")
    lsts = times.sidereal_time("apparent", inst.SITE_LON_DEG).deg
    span = (lsts[1] - lsts[0]) % 360.0
    sources = nvss_like_catalog((lsts[0] - 8, lsts[0] + span + 8), (dec_deg - 6, dec_deg + 6), seed=seed + 1000)
    if calibrator is not None:
        cal = find_calibrator(calibrator) if isinstance(calibrator, str) else calibrator
        sources.append(calibrator_source(cal))
    return write_catalog(sources, path)


def _calibrator_dec(cal) -> float | None:
    if cal is None:
        return None
    return (find_calibrator(cal) if isinstance(cal, str) else cal).dec_deg


@dataclass(frozen=True)
class GroupFaults:
    """What goes wrong in one group of a stream."""

    missing: tuple[int, ...] = ()
    corrupt: Mapping[int, CorruptKind] = field(default_factory=dict)
    jitter_s: float | None = None


def simulate_stream(
    out_dir: Path,
    n_groups: int,
    *,
    start: dt.datetime | str | None = None,
    interval_s: float = 0.0,
    faults: Mapping[int, GroupFaults] | None = None,
    seed: int = 0,
    **group_options,
) -> list[SimulatedGroup]:
    """Consecutive groups (309.2 s apart), one every ``interval_s`` of wall time; faults by group index.

    ``group_options`` go to ``simulate_group`` (n_antennas, jitter_s, calibrator, ...). With a
    calibrator, the stream is centred on its transit, so one group is a calibrator group.
    """
    faults = dict(faults or {})
    cal = group_options.get("calibrator")
    if start is None:
        start = transit_start(find_calibrator(cal).ra_deg if isinstance(cal, str) else cal.ra_deg) if cal else None
        if start is not None:
            start -= dt.timedelta(seconds=round(inst.GROUP_SECONDS * (n_groups // 2)))
    elif isinstance(start, str):
        start = dt.datetime.fromisoformat(start)
    start = start or dt.datetime(2025, 10, 13, 13, 28, 3)
    if group_options.get("catalog") is None:
        group_options["catalog"] = stream_catalog(
            Path(group_options.get("truth_dir") or Path(out_dir) / "truth") / "catalog.csv",
            start,
            n_groups,
            group_options.get("pointing_dec_deg") or _calibrator_dec(cal) or 55.0,
            seed=seed,
            calibrator=cal,
        )
    groups = []
    for k in range(n_groups):
        if k and interval_s:
            time.sleep(interval_s)
        fault = faults.get(k, GroupFaults())
        options = dict(group_options)
        if fault.jitter_s is not None:
            options["jitter_s"] = fault.jitter_s
        group_start = start + dt.timedelta(seconds=round(k * inst.GROUP_SECONDS))
        groups.append(
            simulate_group(
                out_dir,
                group_start,
                missing_subbands=fault.missing,
                corrupt_subbands=fault.corrupt,
                seed=seed + k,
                **options,
            )
        )
    return groups


def find_truth(truth_dir: Path, time_jd: float) -> Path | None:
    """The truth file of the simulated group whose integrations cover ``time_jd`` (e.g. an MS's mid-time)."""
    half = inst.GROUP_SECONDS / 2 / 86400.0
    for path in sorted(Path(truth_dir).glob("*.npz")):
        with np.load(path, allow_pickle=False) as data:
            times = data["times_jd"]
        if times.min() - half <= time_jd <= times.max() + half:
            return path
    return None


# --- variable skies and image-plane epochs -----------------------------------------------------------


def variable_lightcurve(mjds, *, modulation: float = 0.3, seed: int = 0) -> tuple[tuple[float, float], ...]:
    """A source whose flux jumps from epoch to epoch: scale ``1 + modulation N(0, 1)`` at each mjd (at least 0.05)."""
    rng = np.random.default_rng(seed)
    scales = np.clip(1 + modulation * rng.standard_normal(len(mjds)), 0.05, None)
    return tuple((float(t), float(s)) for t, s in zip(mjds, scales, strict=True))


def ese_lightcurve(mjds, *, centre_mjd: float, fwhm_days: float, depth: float) -> tuple[tuple[float, float], ...]:
    """An ESE-like dip, ``1 - depth exp(-4 ln 2 ((t - centre) / fwhm)^2)``: symmetric, flat wings."""
    t = np.asarray(mjds, dtype=float)
    scales = 1 - depth * np.exp(-4 * np.log(2) * ((t - centre_mjd) / fwhm_days) ** 2)
    return tuple((float(a), float(b)) for a, b in zip(t, scales, strict=True))


@dataclass
class SimulatedImage:
    """An image-plane epoch: FITS files as ``imaging.write_fits`` writes them, and what is in them."""

    prefix: Path
    paths: dict[str, Path]
    mjd: float
    ra0_deg: float
    dec0_deg: float
    beam_deg: tuple[float, float, float]
    noise_jy: float
    fluxes: dict[str, float]  # source name -> intrinsic (primary-beam-corrected) flux at this epoch, Jy
    pb: dict[str, float]  # source name -> primary beam toward it


@dataclass
class _EpochLayout:
    """What ``imaging.fits_header`` reads from an MS layout, for an image with no MS behind it."""

    all_freqs: np.ndarray
    times_mjd: np.ndarray
    telescope: str = inst.TELESCOPE_NAME


def _beam_on_grid(shape_lm, x0: float, y0: float, beam_deg, cell_deg: float) -> np.ndarray:
    """Peak-one Gaussian restoring beam at fractional pixel (x0 along l, y0 along m), [l, m] orientation."""
    bmaj, bmin, bpa = beam_deg
    x = (np.arange(shape_lm[0]) - x0)[:, None] * cell_deg
    y = (np.arange(shape_lm[1]) - y0)[None, :] * cell_deg
    theta = np.radians(bpa)  # major axis towards (east, north) = (sin bpa, cos bpa)
    along = x * np.sin(theta) + y * np.cos(theta)
    across = x * np.cos(theta) - y * np.sin(theta)
    return np.exp(-0.5 * ((along / (bmaj / 2.3548)) ** 2 + (across / (bmin / 2.3548)) ** 2))


def simulate_image(
    prefix: Path,
    sources: list[Source],
    *,
    ra0_deg: float,
    dec0_deg: float,
    mjd: float,
    npix: int = 256,
    cell_arcsec: float = 30.0,
    beam_arcsec: tuple[float, float, float] = (100.0, 80.0, 30.0),
    noise_jy: float = 1e-3,
    freq_hz: float = 1.405e9,
    seed: int = 0,
) -> SimulatedImage:
    """Write one epoch's restored, residual, primary-beam and PB-corrected images without visibilities.

    What a CLEANed image of point sources is: each source's flux at ``mjd`` (its light curve applied)
    times the primary beam toward it (an Airy dish pointed at the centre), as the restoring beam,
    plus noise correlated like the restoring beam (white noise smoothed to the beam, ``noise_jy``
    rms). The residual is that noise alone. Small and fast: a series of epochs for photometry and
    variability tests. Written by ``imaging.write_fits`` (same headers, names and orientation).
    """
    from labpipe.radio import imaging, skymodel
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(seed)
    cell_deg = cell_arcsec / 3600.0
    beam_deg = (beam_arcsec[0] / 3600.0, beam_arcsec[1] / 3600.0, float(beam_arcsec[2]))
    offsets = (np.arange(npix) - npix // 2) * np.radians(cell_deg)
    ll, mm = np.meshgrid(offsets, offsets, indexing="ij")
    ra, dec = imaging.lm_to_radec(ll, mm, ra0_deg, dec0_deg)
    sep = skymodel.angular_separation(ra, dec, ra0_deg, dec0_deg)
    pb = inst.airy_power(sep, freq_hz)
    # noise correlated as the restoring beam: white noise smoothed by the beam's square root (sigma / sqrt 2)
    half = (beam_deg[0] / np.sqrt(2), beam_deg[1] / np.sqrt(2), beam_deg[2])
    kernel = _beam_on_grid((61, 61), 30, 30, half, cell_deg)
    noise = fftconvolve(rng.standard_normal((npix, npix)), kernel, mode="same")
    noise *= noise_jy / noise.std()
    restored = noise.copy()
    fluxes, beams = {}, {}
    for s in sources:
        l_, m_, _ = skymodel.lmn(s.ra_deg, s.dec_deg, ra0_deg, dec0_deg)
        x0, y0 = l_ / np.radians(cell_deg) + npix // 2, m_ / np.radians(cell_deg) + npix // 2
        if not (0 <= x0 < npix and 0 <= y0 < npix):
            continue
        gain = float(inst.airy_power(skymodel.angular_separation(s.ra_deg, s.dec_deg, ra0_deg, dec0_deg), freq_hz))
        flux = s.flux_jy * float(s.flux_scale(mjd)) * (freq_hz / s.ref_freq_hz) ** s.spectral_index
        restored += flux * gain * _beam_on_grid((npix, npix), x0, y0, beam_deg, cell_deg)
        fluxes[s.name], beams[s.name] = flux, gain
    result = imaging.ImageResult(
        dirty=restored, psf=np.zeros_like(restored), model=np.zeros_like(restored), residual=noise,
        restored=restored, pb=pb, npix=npix, cell_deg=cell_deg, ra0_deg=ra0_deg, dec0_deg=dec0_deg, freq_hz=freq_hz,
        beam_deg=beam_deg, rms_jy=noise_jy, n_components=0, n_major=0,
    )  # fmt: skip
    layout = _EpochLayout(np.array([freq_hz - 90e6, freq_hz + 90e6]), np.array([mjd]))
    paths = imaging.write_fits(result, layout, Path(prefix), kinds=("image", "residual", "pb", "image.pbcor"))
    return SimulatedImage(Path(prefix), paths, mjd, ra0_deg, dec0_deg, beam_deg, noise_jy, fluxes, beams)


def variability_field(
    mjds, *, ra0_deg: float = 150.0, dec0_deg: float = 55.0, seed: int = 11
) -> tuple[list[Source], str, str]:
    """Fourteen sources on a 4 x 3 grid plus two: twelve steady (20-300 mJy), a variable (30 % modulation) and
    an ESE-like dip (40 % deep, 5 days FWHM, centred in the span); returns (sources, variable name, ESE name)."""
    import math

    mjds = np.asarray(mjds, dtype=float)
    rng = np.random.default_rng(seed)
    positions = [(x, y) for x in (-0.75, -0.25, 0.25, 0.75) for y in (-0.6, 0.0, 0.6)] + [(-0.5, 0.3), (0.5, -0.3)]
    sources = []
    for k, (x, y) in enumerate(positions):
        ra = ra0_deg + x / math.cos(math.radians(dec0_deg + y))
        if k == len(positions) - 2:
            curve = variable_lightcurve(mjds, modulation=0.3, seed=5)
            sources.append(Source("variable", ra, dec0_deg + y, 0.1, lightcurve=curve))
        elif k == len(positions) - 1:
            centre = float(mjds[len(mjds) // 2])
            curve = ese_lightcurve(mjds, centre_mjd=centre, fwhm_days=5.0, depth=0.4)
            sources.append(Source("ese", ra, dec0_deg + y, 0.1, lightcurve=curve))
        else:
            sources.append(Source(f"steady{k}", ra, dec0_deg + y, float(10 ** rng.uniform(-1.7, -0.5))))
    return sources, "variable", "ese"


def science_epochs(
    radio_root: Path,
    n_epochs: int = 30,
    *,
    start_mjd: float = 60000.25,
    ra0_deg: float = 150.0,
    dec0_deg: float = 55.0,
) -> tuple[list[tuple[str, SimulatedImage]], list[Source]]:
    """Daily image-plane epochs of ``variability_field`` written where imaging puts them
    (``<radio>/images/single/DATE/GROUP.*.fits``, GROUP the ISO time); returns [(group, image)] and the sky."""
    from astropy.time import Time

    mjds = start_mjd + np.arange(n_epochs)
    sky, _, _ = variability_field(mjds, ra0_deg=ra0_deg, dec0_deg=dec0_deg)
    epochs = []
    for k, mjd in enumerate(mjds):
        group = Time(mjd, format="mjd").isot[:19]
        prefix = Path(radio_root) / "images" / "single" / group[:10] / group
        image = simulate_image(prefix, sky, ra0_deg=ra0_deg, dec0_deg=dec0_deg, mjd=float(mjd), seed=k)
        epochs.append((group, image))
    return epochs, sky
