"""Primary-beam-weighted linear mosaics of single-group images, per declination strip, with ``reproject``.

M = sum_i w_i pb_i I_i / sum_i w_i pb_i^2 with I_i the restored (not PB-corrected) image, pb_i its
primary beam and w_i = 1 / rms_i^2 (rms of its residual where pb >= 0.2). Its noise per pixel is
1 / sqrt(sum_i w_i pb_i^2), written beside it (FITS extension ``NOISE``). Pixels where
sum w pb^2 falls below ``min_weight`` of its peak are blank. Images and beams are resampled with
``reproject.reproject_interp`` (bicubic: a beam of four pixels keeps its peak; bilinear loses ~2 %
half a pixel off the grid), each onto the part of the output it covers.

The output grid is a plate carrée (CAR) strip: RA linear, Dec linear with CRVAL2 = 0 (an undistorted
cylinder), pixels square on the sky at the strip's declination. It holds any span of RA, 24 h
included, which a SIN or TAN grid does not. ``strip_mosaics`` groups images by pointing declination
(a DSA-110 drift scan keeps one declination for days) and writes one mosaic per strip as
``images/mosaics/<first group>_<last group>_<dec>.fits``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.files import atomic_path
from labpipe.radio.imaging import read_fits_image, robust_rms
from pydantic import BaseModel, Field


class MosaicSettings(BaseModel):
    """How images are combined into declination-strip mosaics."""

    dec_tolerance_deg: float = Field(0.5, description="Images whose pointing declinations differ less share a strip.")
    min_weight: float = Field(0.05, description="Blank where sum w pb^2 is below this fraction of its peak.")
    cell_arcsec: float = Field(0.0, description="Mosaic pixel size; 0: the finest of the inputs.")
    order: str = Field("bicubic", description="reproject_interp order: bilinear, biquadratic or bicubic.")
    max_pixels: int = Field(200_000_000, description="Refuse a mosaic grid larger than this.")


@dataclass
class MosaicResult:
    path: Path
    n_images: int
    npix: tuple[int, int]
    rms_jy: float  # noise where the weights peak
    dec_deg: float = float("nan")
    groups: list[str] = field(default_factory=list)  # the groups of its images (strip_mosaics)


@dataclass
class MosaicInput:
    """One image to mosaic: its FITS prefix, group name, time and pointing declination."""

    prefix: Path
    group: str
    mjd: float
    dec_deg: float


def mosaic_name(start_group: str, end_group: str, dec_deg: float) -> str:
    safe = lambda g: g.replace(":", "")  # noqa: E731
    return f"{safe(start_group)}_{safe(end_group)}_{dec_deg:+.1f}.fits"


def strip_wcs(headers: list, cell_deg: float, max_pixels: int = 200_000_000):
    """A CAR strip covering every image (centres and half-diagonals), pixels ``cell_deg`` on the sky at its Dec."""
    from astropy.wcs import WCS

    ras = np.array([h["CRVAL1"] for h in headers], float)
    decs = np.array([h["CRVAL2"] for h in headers], float)
    ra_mid = math.degrees(math.atan2(np.sin(np.radians(ras)).mean(), np.cos(np.radians(ras)).mean())) % 360
    half = max(math.hypot(h["NAXIS1"] * abs(h["CDELT1"]), h["NAXIS2"] * abs(h["CDELT2"])) for h in headers) / 2
    dec_lo, dec_hi = max(decs.min() - half, -89.9), min(decs.max() + half, 89.9)
    dec0 = float(np.mean(decs))
    widest = max(abs(dec_lo), abs(dec_hi))  # an image spans the most RA at its pole-ward edge
    span_ra = float(np.max(np.abs(((ras - ra_mid + 180) % 360) - 180))) + half / max(
        math.cos(math.radians(widest)), 1e-3
    )
    span_ra = min(span_ra, 180.0)
    cdelt1 = -cell_deg / max(math.cos(math.radians(dec0)), 1e-3)
    nx = int(math.ceil(2 * span_ra / abs(cdelt1))) + 2
    ny = int(math.ceil((dec_hi - dec_lo) / cell_deg)) + 2
    if nx * ny > max_pixels:
        raise InvalidInput(
            f"{nx} x {ny} pixels", "mosaic grid too large", "mosaic a shorter time range or coarser cell"
        )
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---CAR", "DEC--CAR"]
    wcs.wcs.crval = [ra_mid, 0.0]
    wcs.wcs.cdelt = [cdelt1, cell_deg]
    wcs.wcs.crpix = [nx / 2 + 0.5, 1.0 - (dec_lo - cell_deg) / cell_deg]
    wcs.wcs.radesys = "ICRS"
    return wcs, (ny, nx)


def _footprint_box(wcs_in, shape_in, wcs_out, shape_out) -> tuple[slice, slice] | None:
    """The output pixels an input image can touch (its edge mapped through both WCSs, with a margin)."""
    ny, nx = shape_in
    along_x, along_y = np.linspace(0, nx - 1, 64), np.linspace(0, ny - 1, 64)
    zeros = np.zeros(64)
    edge = np.concatenate([
        np.stack([along_x, zeros]), np.stack([along_x, zeros + ny - 1]),
        np.stack([zeros, along_y]), np.stack([zeros + nx - 1, along_y]),
    ], axis=1)  # fmt: skip
    ra, dec = wcs_in.pixel_to_world_values(edge[0], edge[1])
    x, y = wcs_out.world_to_pixel_values(ra, dec)
    good = np.isfinite(x) & np.isfinite(y)
    if not good.any():
        return None
    x0, x1 = max(int(np.floor(x[good].min())) - 2, 0), min(int(np.ceil(x[good].max())) + 3, shape_out[1])
    y0, y1 = max(int(np.floor(y[good].min())) - 2, 0), min(int(np.ceil(y[good].max())) + 3, shape_out[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return slice(y0, y1), slice(x0, x1)


def linear_mosaic(
    image_prefixes: list[Path], out: Path, min_weight: float = 0.05, settings: MosaicSettings | None = None
) -> MosaicResult:
    """Combine ``<prefix>.image.fits`` + ``<prefix>.pb.fits`` + ``<prefix>.residual.fits`` into ``out``."""
    from astropy.io import fits
    from reproject import reproject_interp

    settings = settings or MosaicSettings(min_weight=min_weight)
    if not image_prefixes:
        raise InvalidInput(out, "no images to mosaic", "image some groups in the time range first")
    inputs = []
    for prefix in image_prefixes:
        paths = {k: Path(f"{prefix}.{k}.fits") for k in ("image", "pb", "residual")}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise InvalidInput(prefix, f"missing {missing}", "re-run imaging of this group")
        image, wcs, header = read_fits_image(paths["image"])
        pb, pb_wcs, _ = read_fits_image(paths["pb"])
        residual, _, _ = read_fits_image(paths["residual"])
        inputs.append((image, wcs, pb, pb_wcs, header, robust_rms(residual, pb >= 0.2)))
    headers = [h for *_, h, _ in inputs]
    cell = settings.cell_arcsec / 3600 if settings.cell_arcsec > 0 else min(abs(h["CDELT2"]) for h in headers)
    out_wcs, shape = strip_wcs(headers, cell, settings.max_pixels)
    num = np.zeros(shape)
    den = np.zeros(shape)
    for image, wcs, pb, pb_wcs, _, rms in inputs:
        box = _footprint_box(wcs, image.shape, out_wcs, shape)
        if box is None:
            continue
        sub_wcs, sub_shape = out_wcs[box], (box[0].stop - box[0].start, box[1].stop - box[1].start)
        img, covered = reproject_interp((np.nan_to_num(image), wcs), sub_wcs, shape_out=sub_shape, order=settings.order)
        beam, _ = reproject_interp((np.nan_to_num(pb), pb_wcs), sub_wcs, shape_out=sub_shape, order=settings.order)
        ok = (covered > 0) & np.isfinite(img) & np.isfinite(beam)
        beam = np.where(ok, np.clip(beam, 0, None), 0.0)
        w = 1.0 / max(rms, 1e-12) ** 2
        num[box] += w * beam * np.where(ok, img, 0.0)
        den[box] += w * beam**2
    peak = den.max()
    good = den >= settings.min_weight * peak if peak > 0 else np.zeros(shape, bool)
    mosaic = np.where(good, num / np.where(good, den, 1), np.nan)
    noise = np.where(good, 1 / np.sqrt(np.where(good, den, 1)), np.nan)
    header = out_wcs.to_header()
    first = headers[0]
    for key in ("BMAJ", "BMIN", "BPA", "TELESCOP", "RESTFRQ"):
        if key in first:
            header[key] = first[key]
    header["BUNIT"] = "JY/BEAM"
    header["NCOMBINE"] = len(inputs)
    header["MJD-OBS"] = min(float(h.get("MJD-OBS", np.nan)) for h in headers)
    header["ORIGIN"] = "labpipe linear mosaic (pb^2/rms^2 weighted, reproject)"
    out = Path(out)
    with atomic_path(out) as tmp:
        fits.HDUList([
            fits.PrimaryHDU(mosaic.astype(np.float32), header=header),
            fits.ImageHDU(noise.astype(np.float32), header=header, name="NOISE"),
        ]).writeto(tmp)  # fmt: skip
    best_noise = 1 / math.sqrt(peak) if peak > 0 else float("nan")
    return MosaicResult(out, len(inputs), shape, best_noise, float(np.mean([h["CRVAL2"] for h in headers])))


def strips(images: list[MosaicInput], tolerance_deg: float) -> list[list[MosaicInput]]:
    """Images grouped by pointing declination: sorted by Dec, a new strip where the gap exceeds the tolerance."""
    ordered = sorted(images, key=lambda i: i.dec_deg)
    groups: list[list[MosaicInput]] = []
    for image in ordered:
        if groups and image.dec_deg - groups[-1][-1].dec_deg <= tolerance_deg:
            groups[-1].append(image)
        else:
            groups.append([image])
    return [sorted(g, key=lambda i: i.mjd) for g in groups]


def strip_mosaics(
    images: list[MosaicInput], start_mjd: float, end_mjd: float, out_dir: Path, settings: MosaicSettings | None = None
) -> list[MosaicResult]:
    """One mosaic per declination strip of the images observed in [start_mjd, end_mjd], into ``out_dir``."""
    settings = settings or MosaicSettings()
    chosen = [i for i in images if start_mjd <= i.mjd <= end_mjd]
    results = []
    for strip in strips(chosen, settings.dec_tolerance_deg):
        dec = float(np.median([i.dec_deg for i in strip]))
        out = Path(out_dir) / mosaic_name(strip[0].group, strip[-1].group, dec)
        result = linear_mosaic([i.prefix for i in strip], out, settings=settings)
        result.groups = [i.group for i in strip]
        results.append(result)
    return results


def read_mosaic(path: Path):
    """(mosaic [y, x], noise [y, x], celestial WCS, header) of a mosaic written here."""
    from astropy.io import fits
    from astropy.wcs import WCS

    with fits.open(path) as hdul:
        data = np.asarray(hdul[0].data, dtype=float)
        noise = np.asarray(hdul["NOISE"].data, dtype=float) if "NOISE" in hdul else np.full(data.shape, np.nan)
        header = hdul[0].header
    return data, noise, WCS(header).celestial, header


def measure(path: Path, ra_deg: float, dec_deg: float, box_beams: float = 1.0) -> tuple[float, float]:
    """(flux, error) of a point source at a position in a mosaic: the beam fitted there, its noise map's error."""
    from labpipe.radio.photometry import fit_beam

    data, noise, wcs, header = read_mosaic(path)
    x, y = (float(v) for v in wcs.world_to_pixel_values(ra_deg, dec_deg))
    cell = abs(float(header["CDELT2"]))
    half = max(2, math.ceil(box_beams * float(header["BMAJ"]) / cell))
    ix, iy = int(round(x)), int(round(y))
    if not (half <= ix < data.shape[1] - half and half <= iy < data.shape[0] - half):
        return float("nan"), float("nan")
    flux, factor = fit_beam(data, wcs, (header["BMAJ"], header["BMIN"], header["BPA"]), x, y, half)
    return flux, float(noise[iy, ix]) * factor
