"""Primary-beam-weighted linear mosaics of single-group images over a time range.

M = sum_i w_i pb_i I_i / sum_i w_i pb_i^2 with I_i the restored (not PB-corrected) image,
pb_i its primary beam and w_i = 1 / rms_i^2, each reprojected onto a common SIN grid centred on
the middle of the images (bilinear resampling through the WCS). Pixels where sum w pb^2 falls
below ``min_weight`` of its peak are blank. Written as ``images/mosaics/<start>_<end>_<dec>.fits``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from labpipe.files import atomic_path
from labpipe.radio.imaging import read_fits_image, robust_rms


@dataclass
class MosaicResult:
    path: Path
    n_images: int
    npix: tuple[int, int]
    rms_jy: float


def mosaic_name(start_group: str, end_group: str, dec_deg: float) -> str:
    safe = lambda g: g.replace(":", "")  # noqa: E731
    return f"{safe(start_group)}_{safe(end_group)}_{dec_deg:+.1f}.fits"


def _output_wcs(headers: list, cell_deg: float):
    from astropy.wcs import WCS

    ras = np.array([h["CRVAL1"] for h in headers])
    decs = np.array([h["CRVAL2"] for h in headers])
    # mean RA on the circle (groups may straddle 0h)
    ra0 = math.degrees(math.atan2(np.sin(np.radians(ras)).mean(), np.cos(np.radians(ras)).mean())) % 360
    dec0 = float(decs.mean())
    half_width = max(h["NAXIS1"] * abs(h["CDELT1"]) for h in headers) / 2
    span_ra = float(np.max(np.abs(((ras - ra0 + 180) % 360) - 180))) * math.cos(math.radians(dec0))
    span_dec = float(np.max(np.abs(decs - dec0)))
    nx = int(2 * (span_ra + half_width) / cell_deg) + 2
    ny = int(2 * (span_dec + half_width) / cell_deg) + 2
    nx, ny = nx + nx % 2, ny + ny % 2
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    wcs.wcs.crval = [ra0, dec0]
    wcs.wcs.cdelt = [-cell_deg, cell_deg]
    wcs.wcs.crpix = [nx / 2, ny / 2 + 1]
    wcs.wcs.radesys = "ICRS"
    return wcs, (ny, nx)


def linear_mosaic(image_prefixes: list[Path], out: Path, min_weight: float = 0.05) -> MosaicResult:
    """Combine ``<prefix>.image.fits`` + ``<prefix>.pb.fits`` + ``<prefix>.residual.fits`` into ``out``."""
    from astropy.io import fits
    from scipy import ndimage

    if not image_prefixes:
        raise InvalidInput(out, "no images to mosaic", "image some groups in the time range first")
    inputs = []
    for prefix in image_prefixes:
        paths = {k: Path(f"{prefix}.{k}.fits") for k in ("image", "pb", "residual")}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise InvalidInput(prefix, f"missing {missing}", "re-run imaging of this group")
        image, wcs, header = read_fits_image(paths["image"])
        pb, _, _ = read_fits_image(paths["pb"])
        residual, _, _ = read_fits_image(paths["residual"])
        inputs.append((image, pb, wcs, header, robust_rms(residual, pb >= 0.2)))
    headers = [h for *_, h, _ in inputs]
    cell = min(abs(h["CDELT2"]) for h in headers)
    out_wcs, shape = _output_wcs(headers, cell)
    num = np.zeros(shape)
    den = np.zeros(shape)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    ra, dec = out_wcs.pixel_to_world_values(xx, yy)
    for image, pb, wcs, _, rms in inputs:
        px, py = wcs.world_to_pixel_values(ra, dec)
        coords = np.array([py, px])
        img = ndimage.map_coordinates(np.nan_to_num(image), coords, order=1, cval=0.0)
        beam = ndimage.map_coordinates(np.nan_to_num(pb), coords, order=1, cval=0.0)
        w = 1.0 / max(rms, 1e-12) ** 2
        num += w * beam * img
        den += w * beam**2
    good = den >= min_weight * den.max()
    mosaic = np.where(good, num / np.where(good, den, 1), np.nan)
    header = out_wcs.to_header()
    first = headers[0]
    for key in ("BMAJ", "BMIN", "BPA", "TELESCOP", "RESTFRQ"):
        if key in first:
            header[key] = first[key]
    header["BUNIT"] = "JY/BEAM"
    header["NCOMBINE"] = len(inputs)
    header["ORIGIN"] = "labpipe linear mosaic (pb^2/rms^2 weighted)"
    out = Path(out)
    with atomic_path(out) as tmp:
        fits.PrimaryHDU(mosaic.astype(np.float32), header=header).writeto(tmp)
    best_noise = 1 / math.sqrt(den.max()) if den.max() > 0 else float("nan")  # where the weights peak
    return MosaicResult(out, len(inputs), shape, best_noise)
