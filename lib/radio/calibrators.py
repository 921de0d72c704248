"""Calibrator catalog and the test "does a calibrator transit this group's field?".

A group's Measurement Set goes to ``ms/calibrators`` when a catalog calibrator
crosses the meridian during the group (its hour angle changes sign between the
first and the last integration) within ``radius_deg`` of the pointing
declination (default: half the primary beam's FWHM at 1.4 GHz); else to
``ms/science``. The catalog is a CSV (name, ra_deg, dec_deg, flux_jy,
spectral_index) the lab edits; ``DEFAULT_CALIBRATORS`` are well-known bright
1.4 GHz calibrators used when no file is configured.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.radio.instrument import beam_fwhm_deg, site_location


@dataclass(frozen=True)
class Calibrator:
    name: str
    ra_deg: float  # J2000
    dec_deg: float
    flux_jy: float  # at 1.4 GHz
    spectral_index: float = -0.7


DEFAULT_CALIBRATORS = (
    Calibrator("3C48", 24.42208, 33.15975, 16.0, -0.76),
    Calibrator("3C138", 80.29121, 16.63946, 8.5, -0.50),
    Calibrator("3C147", 85.65058, 49.85201, 22.5, -0.70),
    Calibrator("3C196", 123.40000, 48.21750, 14.0, -0.85),
    Calibrator("0834+555", 128.72875, 55.57253, 8.3, -0.60),
    Calibrator("3C286", 202.78454, 30.50916, 14.9, -0.46),
    Calibrator("3C295", 212.83550, 52.20275, 22.2, -0.70),
    Calibrator("3C380", 277.38242, 48.74617, 13.7, -0.70),
)
DEFAULT_RADIUS_DEG = beam_fwhm_deg(1.4e9) / 2


def read_calibrators(path: Path) -> list[Calibrator]:
    """Calibrators from a CSV with columns name, ra_deg, dec_deg, flux_jy[, spectral_index]."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        return [
            Calibrator(
                r["name"],
                float(r["ra_deg"]),
                float(r["dec_deg"]),
                float(r["flux_jy"]),
                float(r.get("spectral_index") or -0.7),
            )
            for r in rows
        ]
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InvalidInput(
            path, f"not a calibrator catalog ({exc})", "expected a CSV with name, ra_deg, dec_deg, flux_jy"
        ) from exc


def write_calibrators(calibrators, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "ra_deg", "dec_deg", "flux_jy", "spectral_index"])
        for c in calibrators:
            writer.writerow([c.name, f"{c.ra_deg:.6f}", f"{c.dec_deg:.6f}", c.flux_jy, c.spectral_index])
    return path


def load_calibrators(path: Path | None) -> list[Calibrator]:
    """The configured catalog, or the built-in list when ``path`` is empty or absent."""
    if path is not None and Path(path).exists():
        return read_calibrators(Path(path))
    return list(DEFAULT_CALIBRATORS)


def hour_angles_deg(ra_deg, dec_deg, times_jd) -> np.ndarray:
    """(sources, times) hour angle in degrees, wrapped to [-180, 180), of J2000 positions at the site."""
    import astropy.units as u
    from astropy.coordinates import HADec, SkyCoord
    from astropy.time import Time

    ra, dec = np.atleast_1d(ra_deg), np.atleast_1d(dec_deg)
    times = Time(np.atleast_1d(times_jd), format="jd")
    coords = SkyCoord(ra=ra[:, None] * u.deg, dec=dec[:, None] * u.deg, frame="icrs")
    frame = HADec(obstime=times[None, :], location=site_location())
    ha = coords.transform_to(frame).ha.wrap_at(180 * u.deg).deg
    return np.asarray(ha).reshape(len(ra), len(times))


def transiting_calibrator(
    calibrators: list[Calibrator],
    pointing_dec_deg: float,
    first_jd: float,
    last_jd: float,
    radius_deg: float = DEFAULT_RADIUS_DEG,
) -> Calibrator | None:
    """The brightest calibrator that crosses the meridian between two times near the pointing, or None."""
    near = [c for c in calibrators if abs(c.dec_deg - pointing_dec_deg) <= radius_deg]
    if not near:
        return None
    ha = hour_angles_deg([c.ra_deg for c in near], [c.dec_deg for c in near], [first_jd, last_jd])
    transiting = [c for c, (h0, h1) in zip(near, ha, strict=True) if h0 <= 0.0 <= h1]
    return max(transiting, key=lambda c: c.flux_jy, default=None)
