"""The DSA-110 as labpipe models it: site, band layout, array, dishes, primary beam.

One place for the instrument's constants, used by the simulator, the grouping
of subband files and the converter. Frequencies: 16 subbands of 48 channels of
244.140625 kHz; subband 0 is the top of the band and channels descend within a
subband too, as the correlator writes them (channel 0 of sb00 at 1498.75 MHz,
the last channel of sb15 at ~1311.49 MHz). Measurement Sets are written in
ascending frequency.
"""

from __future__ import annotations

import functools
import math

import numpy as np

C_LIGHT = 299_792_458.0

SITE_LAT_DEG = 37.2314
SITE_LON_DEG = -118.2817
SITE_HEIGHT_M = 1222.0
TELESCOPE_NAME = "DSA_110"

N_SUBBANDS = 16
N_CHANNELS = 48  # per subband
CHANNEL_WIDTH_HZ = 244_140.625
TOP_FREQ_HZ = 1498.75e6  # centre of channel 0 of sb00
INTEGRATION_S = 12.884902
N_INTEGRATIONS = 24  # per file: 309.2 s, one group
GROUP_SECONDS = INTEGRATION_S * N_INTEGRATIONS
POLARIZATIONS = ("xx", "yy")
DISH_DIAMETER_M = 4.65
N_ANTENNAS = 96


def subband_frequencies(subband: int, n_channels: int = N_CHANNELS) -> np.ndarray:
    """Channel centres of one subband (Hz), in file order (descending)."""
    first = subband * n_channels
    return TOP_FREQ_HZ - CHANNEL_WIDTH_HZ * (first + np.arange(n_channels))


def band_frequencies(n_subbands: int = N_SUBBANDS, n_channels: int = N_CHANNELS) -> np.ndarray:
    """All channel centres of a group (Hz), ascending, as the Measurement Set holds them."""
    return np.sort(np.concatenate([subband_frequencies(s, n_channels) for s in range(n_subbands)]))


@functools.cache
def site_location():
    """The array reference position as an astropy ``EarthLocation``."""
    import astropy.units as u
    from astropy.coordinates import EarthLocation

    return EarthLocation.from_geodetic(SITE_LON_DEG * u.deg, SITE_LAT_DEG * u.deg, SITE_HEIGHT_M * u.m)


def antenna_layout(n_antennas: int = N_ANTENNAS) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Antenna numbers, names and east-north-up positions (m) of a DSA-110-like T array.

    Two thirds of the dishes lie on an east-west arm (a dense core of 5.75 m
    spacing, then outriggers to +-1.2 km), the rest on a north arm to 1.4 km.
    The layout depends only on ``n_antennas``, so groups simulated apart agree.
    """
    if n_antennas < 3:
        raise ValueError(f"n_antennas={n_antennas}: an interferometer for calibration needs at least 3 antennas")
    n_ew = max(2, math.ceil(2 * n_antennas / 3))
    n_ns = n_antennas - n_ew
    n_core = max(2, n_ew // 2)
    core = (np.arange(n_core) - (n_core - 1) / 2) * 5.75
    n_out = n_ew - n_core
    half = n_out // 2
    outer = np.concatenate(
        [-np.geomspace(core[-1] + 40.0, 1200.0, n_out - half), np.geomspace(core[-1] + 40.0, 1200.0, half)]
    )
    east = np.concatenate([core, outer, np.zeros(n_ns)])
    north = np.concatenate([np.zeros(n_ew), np.geomspace(30.0, 1400.0, n_ns) if n_ns else np.zeros(0)])
    up = 0.02 * np.sin(east / 97.0) + 0.03 * np.cos(north / 131.0)  # gentle terrain, deterministic
    enu = np.stack([east, north, up], axis=1)
    numbers = np.arange(1, n_antennas + 1)
    names = [f"DSA-{n:03d}" for n in numbers]
    return numbers, names, enu


def airy_power(theta_rad: np.ndarray, freq_hz: np.ndarray | float, dish_m: float = DISH_DIAMETER_M) -> np.ndarray:
    """Primary beam power of a uniformly illuminated dish: (2 J1(x) / x)^2, x = pi D sin(theta) / lambda."""
    from scipy.special import j1

    x = np.pi * dish_m * np.sin(np.asarray(theta_rad)) * np.asarray(freq_hz) / C_LIGHT
    safe = np.where(np.abs(x) < 1e-9, 1.0, x)
    return np.where(np.abs(x) < 1e-9, 1.0, (2.0 * j1(safe) / safe) ** 2)


def beam_fwhm_deg(freq_hz: float, dish_m: float = DISH_DIAMETER_M) -> float:
    """Full width at half power of the Airy beam (1.029 lambda / D)."""
    return math.degrees(1.029 * C_LIGHT / freq_hz / dish_m)


def pointing_altaz_deg(dec_deg: float) -> tuple[float, float]:
    """Altitude and azimuth of a transit dish pointed on the meridian at declination ``dec_deg``."""
    alt = 90.0 - abs(SITE_LAT_DEG - dec_deg)
    az = 0.0 if dec_deg >= SITE_LAT_DEG else 180.0
    return alt, az
