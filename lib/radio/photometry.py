"""Forced photometry at master-source positions, and light curves.

At a fixed position the flux is the amplitude of the restoring beam fitted to the restored image
(``<prefix>.image.fits``, flat noise) over a box of ``box_beams`` beam FWHMs around it:
``F = sum K I / sum K^2``, K the beam (Gaussian BMAJ, BMIN, BPA of the header, on the sky) centred
on the position. Its error: the local noise ``sigma`` (1.4826 x the median absolute deviation of
the residual image in a box of ``noise_box_beams`` beams) times ``sqrt(sum K rho K) / sum K^2``, what
a beam-shaped fit picks up from noise that is itself correlated like the beam (rho): sqrt(4/3) for
finely sampled Gaussians of any ellipticity, summed on the actual pixels. Both are divided by the
primary beam toward the position (``<prefix>.pb.fits``): the intrinsic flux, as the catalogue's.

A light curve is the ``ForcedFlux`` rows of one source, by time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.db.connect import LabDatabase
from labpipe.errors import InvalidInput
from labpipe.radio import catalogue
from pydantic import BaseModel, Field

CORRELATED_NOISE_FACTOR = math.sqrt(4.0 / 3.0)


class PhotometrySettings(BaseModel):
    """How sources are measured at fixed positions."""

    min_pb: float = Field(0.1, description="Measure only where the primary beam is at least this.")
    box_beams: float = Field(1.0, description="Half-width of the fitted box, in beam FWHMs.")
    noise_box_beams: float = Field(10.0, description="Half-width of the box the local noise is measured in (beams).")


@dataclass
class ForcedMeasurement:
    """One position measured in one image (NaN flux where it could not be measured)."""

    ra_deg: float
    dec_deg: float
    flux_jy: float  # primary-beam corrected
    flux_err_jy: float
    pb: float
    local_rms_jy: float  # before the beam correction
    x: float  # pixel (0-based) in the image
    y: float


def _read(path: Path):
    from labpipe.radio.imaging import read_fits_image

    if not Path(path).is_file():
        raise InvalidInput(path, "image file missing", "re-run imaging of this group")
    return read_fits_image(path)


def _local_axes(wcs, x: float, y: float) -> np.ndarray:
    """2x2 matrix from pixel offsets (dx, dy) to sky offsets (east, north) in degrees, at (x, y)."""
    ra0, dec0 = wcs.pixel_to_world_values(x, y)
    out = np.empty((2, 2))
    for k, (dx, dy) in enumerate(((1.0, 0.0), (0.0, 1.0))):
        ra, dec = wcs.pixel_to_world_values(x + dx, y + dy)
        out[0, k] = (((ra - ra0 + 180.0) % 360.0) - 180.0) * math.cos(math.radians(float(dec0)))
        out[1, k] = dec - dec0
    return out


def _robust_rms(values: np.ndarray) -> float:
    values = values[np.isfinite(values)]
    if values.size < 10:
        return float("nan")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def forced_photometry(
    prefix: Path, ra_deg, dec_deg, settings: PhotometrySettings | None = None
) -> list[ForcedMeasurement]:
    """Measure the image ``<prefix>.image.fits`` at each position (see the module doc)."""
    settings = settings or PhotometrySettings()
    image, wcs, header = _read(Path(f"{prefix}.image.fits"))
    pb, pb_wcs, _ = _read(Path(f"{prefix}.pb.fits"))
    residual_path = Path(f"{prefix}.residual.fits")
    residual = _read(residual_path)[0] if residual_path.exists() else image
    beam = float(header["BMAJ"]), float(header["BMIN"]), float(header["BPA"])
    bmaj = beam[0]
    cell = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))))
    half = max(2, math.ceil(settings.box_beams * bmaj / cell))
    noise_half = max(half + 2, math.ceil(settings.noise_box_beams * bmaj / cell))
    ra_deg, dec_deg = np.atleast_1d(np.asarray(ra_deg, float)), np.atleast_1d(np.asarray(dec_deg, float))
    xs, ys = wcs.world_to_pixel_values(ra_deg, dec_deg)
    pxs, pys = pb_wcs.world_to_pixel_values(ra_deg, dec_deg)
    ny, nx = image.shape
    out = []
    for ra, dec, x, y, px, py in zip(ra_deg, dec_deg, xs, ys, pxs, pys, strict=True):
        x, y = float(x), float(y)
        ix, iy = int(round(x)), int(round(y))
        nan = ForcedMeasurement(float(ra), float(dec), math.nan, math.nan, math.nan, math.nan, x, y)
        if not (half <= ix < nx - half and half <= iy < ny - half):
            out.append(nan)
            continue
        gain = _pb_value(pb, float(px), float(py))
        if not (math.isfinite(gain) and gain >= settings.min_pb):
            nan.pb = gain
            out.append(nan)
            continue
        flux, factor = fit_beam(image, wcs, beam, x, y, half)
        box = residual[max(iy - noise_half, 0) : iy + noise_half + 1, max(ix - noise_half, 0) : ix + noise_half + 1]
        rms = _robust_rms(box)
        err = rms * factor
        out.append(ForcedMeasurement(float(ra), float(dec), flux / gain, err / gain, gain, rms, x, y))
    return out


def fit_beam(image: np.ndarray, wcs, beam_deg: tuple[float, float, float], x: float, y: float, half: int):
    """(amplitude of the beam fitted at pixel (x, y), its error over the noise sigma) in a box of +-``half`` px.

    ``beam_deg``: (bmaj, bmin FWHM, bpa east of north) in degrees; ``wcs`` gives the sky directions
    of the pixel axes at (x, y), so any projection works (labpipe's SIN images, CAR mosaics).
    """
    bmaj, bmin, bpa = beam_deg[0], beam_deg[1], math.radians(beam_deg[2])
    ix, iy = int(round(x)), int(round(y))
    yy, xx = np.mgrid[iy - half : iy + half + 1, ix - half : ix + half + 1]
    east, north = np.tensordot(_local_axes(wcs, x, y), np.stack([xx - x, yy - y]), axes=1)
    along = east * math.sin(bpa) + north * math.cos(bpa)
    across = east * math.cos(bpa) - north * math.sin(bpa)
    kernel = np.exp(-0.5 * ((along / (bmaj / 2.3548)) ** 2 + (across / (bmin / 2.3548)) ** 2))
    patch = image[iy - half : iy + half + 1, ix - half : ix + half + 1]
    usable = np.isfinite(patch)
    if not usable.any():
        return math.nan, math.nan
    flux = float(np.sum(kernel * np.where(usable, patch, 0)) / np.sum(kernel[usable] ** 2))
    return flux, _correlated_noise_factor(kernel[usable], along[usable], across[usable], bmaj, bmin)


def _correlated_noise_factor(kernel, along, across, bmaj: float, bmin: float) -> float:
    """sqrt(sum_ij K_i rho_ij K_j) / sum K^2 for noise correlated like the beam (rho): the fit's error over sigma.

    4/3 in the limit of fine pixels (``CORRELATED_NOISE_FACTOR``); summed here on the actual pixels,
    which matters for coarsely sampled beams.
    """
    k = kernel.ravel()
    d_along = (along.ravel()[:, None] - along.ravel()[None, :]) / (bmaj / 2.3548)
    d_across = (across.ravel()[:, None] - across.ravel()[None, :]) / (bmin / 2.3548)
    rho = np.exp(-0.5 * (d_along**2 + d_across**2))
    return float(np.sqrt(k @ rho @ k) / np.sum(k**2))


def _pb_value(pb: np.ndarray, x: float, y: float) -> float:
    from scipy import ndimage

    if not (0 <= x <= pb.shape[1] - 1 and 0 <= y <= pb.shape[0] - 1):
        return math.nan
    return float(ndimage.map_coordinates(np.nan_to_num(pb), [[y], [x]], order=1)[0])


def measure_image(
    db: LabDatabase,
    image_id: str,
    settings: PhotometrySettings | None = None,
    source_ids: list[int] | None = None,
) -> int:
    """Forced photometry of master sources (all, or ``source_ids``) in one recorded image; returns rows added.

    Pairs already measured are skipped (idempotent); sources off the image or below ``min_pb`` get no row.
    """
    t = catalogue.tables(db)
    image = (t.Image & {"image_id": image_id}).to_dicts()
    if not image:
        raise InvalidInput(image_id, "image not recorded", "run the source finding step on it first")
    image = image[0]
    query = t.MasterSource if source_ids is None else t.MasterSource & [{"source_id": int(s)} for s in source_ids]
    sources = query.to_dicts(order_by="source_id")
    if source_ids is not None and not source_ids:
        sources = []
    done = set((t.ForcedFlux & {"image_id": image_id}).to_arrays("source_id").tolist())
    sources = [s for s in sources if s["source_id"] not in done]
    if not sources:
        return 0
    detected = set((t.Detection & {"image_id": image_id} & "source_id IS NOT NULL").to_arrays("source_id").tolist())
    measured = forced_photometry(
        Path(image["prefix"]), [s["ra_deg"] for s in sources], [s["dec_deg"] for s in sources], settings
    )
    rows = [
        dict(
            source_id=s["source_id"], image_id=image_id, mjd=image["mjd"], flux_jy=m.flux_jy,
            flux_err_jy=m.flux_err_jy, pb=m.pb, local_rms_jy=m.local_rms_jy, detected=s["source_id"] in detected,
        )
        for s, m in zip(sources, measured, strict=True)
        if math.isfinite(m.flux_jy) and math.isfinite(m.flux_err_jy)
    ]  # fmt: skip
    if rows:
        t.ForcedFlux.insert(rows, skip_duplicates=True)
    return len(rows)


def backfill(
    db: LabDatabase,
    source_ids: list[int],
    settings: PhotometrySettings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Measure newly promoted sources in every recorded image that covers them (their light curves' past)."""
    if not source_ids:
        return 0
    t = catalogue.tables(db)
    images = t.Image.to_dicts(order_by="mjd")
    sources = (t.MasterSource & [{"source_id": int(s)} for s in source_ids]).to_dicts()
    added = 0
    for k, image in enumerate(images):
        reach = 1.5 * _field_radius_deg(image)
        near = [
            s["source_id"] for s in sources
            if _separation_deg(s["ra_deg"], s["dec_deg"], image["ra_deg"], image["dec_deg"]) <= reach
        ]  # fmt: skip
        if near:
            added += measure_image(db, image["image_id"], settings, near)
        if progress:
            progress(k + 1, len(images))
    return added


def _field_radius_deg(image: dict) -> float:
    """Half the diagonal of the image, from its FITS header (cheap upper bound of what it covers)."""
    from astropy.io import fits

    header = fits.getheader(f"{image['prefix']}.image.fits")
    return math.hypot(header["NAXIS1"] * abs(header["CDELT1"]), header["NAXIS2"] * abs(header["CDELT2"])) / 2


def _separation_deg(ra1, dec1, ra2, dec2) -> float:
    from labpipe.radio.skymodel import angular_separation

    return float(np.degrees(angular_separation(ra1, dec1, ra2, dec2)))


@dataclass
class LightCurve:
    """One source's forced fluxes by time."""

    source_id: int
    mjd: np.ndarray
    flux_jy: np.ndarray
    flux_err_jy: np.ndarray
    detected: np.ndarray
    image_id: np.ndarray


def light_curve(db: LabDatabase, source_id: int) -> LightCurve:
    """The light curve of one master source (empty arrays when it was never measured)."""
    rows = (catalogue.tables(db).ForcedFlux & {"source_id": int(source_id)}).to_dicts(order_by="mjd")
    return LightCurve(
        int(source_id), np.array([r["mjd"] for r in rows], float), np.array([r["flux_jy"] for r in rows], float),
        np.array([r["flux_err_jy"] for r in rows], float), np.array([bool(r["detected"]) for r in rows]),
        np.array([r["image_id"] for r in rows]),
    )  # fmt: skip


def light_curve_figure(curve: LightCurve, title: str = "", assessment=None):
    """A plot of a light curve (errors, detections filled, the median and an ESE dip's span if any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.errorbar(curve.mjd, curve.flux_jy * 1e3, yerr=curve.flux_err_jy * 1e3, fmt="none", ecolor="0.6", lw=0.8)
    ax.scatter(curve.mjd[curve.detected], curve.flux_jy[curve.detected] * 1e3, s=14, c="C0", label="detected")
    ax.scatter(curve.mjd[~curve.detected], curve.flux_jy[~curve.detected] * 1e3, s=14, facecolors="none",
               edgecolors="C0", label="forced only")  # fmt: skip
    if len(curve.mjd):
        ax.axhline(np.median(curve.flux_jy) * 1e3, color="k", lw=0.6)
    if assessment is not None and getattr(assessment, "ese", None) is not None:
        ax.axvspan(assessment.ese.start_mjd, assessment.ese.end_mjd, color="C3", alpha=0.15, label="ESE candidate")
    ax.set_xlabel("MJD")
    ax.set_ylabel("flux density (mJy)")
    ax.set_title(title or f"source {curve.source_id}", fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig
