"""Image QA: noise, dynamic range, beam, catalog sources recovered (flux ratio, astrometric offset), a picture.

Measurements are made on the written FITS files through their WCS, so a wrong header shows up as
astrometric offsets here. A catalog source is measured when the primary beam toward it is at least
``min_pb`` and its expected apparent flux is at least ``min_snr`` times the image noise, and no other
catalog source brighter than a fifth of it lies within ``isolation_beams`` beams (confusion would
bias the peak). Expected flux is what a primary-beam-corrected image measures: the catalog flux
averaged over the band and the group weighted by the beam, sum S A / sum A.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from labpipe.files import atomic_path, atomic_write_text
from labpipe.radio import skymodel
from labpipe.radio.imaging import read_fits_image, robust_rms
from pydantic import BaseModel, Field


class QaSettings(BaseModel):
    """Which catalog sources an image is checked against, and what passes."""

    min_pb: float = Field(0.25, description="Measure sources where the primary beam is at least this.")
    min_snr: float = Field(10.0, description="Measure sources expected at least this many sigma.")
    isolation_beams: float = Field(3.0, description="Skip sources with a brighter neighbour within this many beams.")
    max_flux_error: float = Field(0.1, description="QA passes when the median |flux ratio - 1| is at most this.")
    max_offset_beams: float = Field(0.2, description="QA passes when the median offset is at most this many beams.")


def _sub_pixel_peak(image: np.ndarray, y: int, x: int, box: int = 2) -> tuple[float, float, float]:
    """(value, y, x) of the peak within ``box`` pixels of (y, x), refined by a 3-point parabola per axis."""
    ny, nx = image.shape
    y0, y1, x0, x1 = max(y - box, 1), min(y + box + 1, ny - 1), max(x - box, 1), min(x + box + 1, nx - 1)
    patch = np.nan_to_num(image[y0:y1, x0:x1], nan=-np.inf)
    if patch.size == 0 or not np.isfinite(patch).any():
        return float("nan"), float(y), float(x)
    py, px = np.unravel_index(np.argmax(patch), patch.shape)
    py, px = py + y0, px + x0

    def refine(a, b, c):
        denom = a - 2 * b + c
        return 0.5 * (a - c) / denom if denom != 0 else 0.0

    dy = refine(image[py - 1, px], image[py, px], image[py + 1, px])
    dx = refine(image[py, px - 1], image[py, px], image[py, px + 1])
    dy, dx = float(np.clip(dy, -0.5, 0.5)), float(np.clip(dx, -0.5, 0.5))
    value = image[py, px] - 0.25 * (image[py - 1, px] - image[py + 1, px]) * dy
    value -= 0.25 * (image[py, px - 1] - image[py, px + 1]) * dx
    return float(value), py + dy, px + dx


def measure_sources(
    pbcor_fits: Path,
    pb_fits: Path,
    expected: skymodel.FieldModel,
    rms_jy: float,
    beam_deg: float,
    settings: QaSettings,
) -> list[dict]:
    """Flux and position of every catalog source of ``expected`` that qualifies (see the module doc)."""
    image, wcs, _ = read_fits_image(pbcor_fits)
    pb, _, _ = read_fits_image(pb_fits)
    cat = expected.catalog
    exp_flux = expected.beam_weighted_flux()
    apparent = expected.apparent.mean(axis=(1, 2))
    rows = []
    for i in range(len(cat)):
        px, py = wcs.world_to_pixel_values(cat.ra_deg[i], cat.dec_deg[i])
        x, y = int(round(float(px))), int(round(float(py)))
        if not (2 <= x < image.shape[1] - 2 and 2 <= y < image.shape[0] - 2):
            continue
        if pb[y, x] < settings.min_pb or apparent[i] < settings.min_snr * rms_jy:
            continue
        sep = np.degrees(skymodel.angular_separation(cat.ra_deg, cat.dec_deg, cat.ra_deg[i], cat.dec_deg[i]))
        neighbours = (sep > 0) & (sep < settings.isolation_beams * beam_deg) & (apparent > 0.2 * apparent[i])
        if neighbours.any():
            continue
        value, fy, fx = _sub_pixel_peak(image, y, x)
        ra, dec = wcs.pixel_to_world_values(fx, fy)
        offset = float(np.degrees(skymodel.angular_separation(ra, dec, cat.ra_deg[i], cat.dec_deg[i])))
        rows.append(
            {
                "name": str(cat.name[i]),
                "ra_deg": float(cat.ra_deg[i]),
                "dec_deg": float(cat.dec_deg[i]),
                "pb": round(float(pb[y, x]), 4),
                "expected_jy": round(float(exp_flux[i]), 5),
                "measured_jy": round(value, 5),
                "flux_ratio": round(value / float(exp_flux[i]), 4),
                "offset_arcsec": round(offset * 3600, 3),
                "offset_beams": round(offset / beam_deg, 4),
                "x": round(fx, 2),
                "y": round(fy, 2),
            }
        )
    return rows


def image_metrics(
    paths: dict[str, Path],
    expected: skymodel.FieldModel,
    settings: QaSettings,
    extra: dict | None = None,
) -> dict:
    """The metrics of one image (written as ``<timestamp>.metrics.json``)."""
    restored, _, header = read_fits_image(paths["image"])
    residual, _, _ = read_fits_image(paths["residual"])
    pb, _, _ = read_fits_image(paths["pb"])
    inner = pb >= 0.2
    rms = robust_rms(residual, inner)
    peak = float(np.nanmax(restored[inner])) if inner.any() else float("nan")
    bmaj, bmin, bpa = float(header["BMAJ"]), float(header["BMIN"]), float(header["BPA"])
    sources = measure_sources(paths["image.pbcor"], paths["pb"], expected, rms, math.sqrt(bmaj * bmin), settings)
    ratios = np.array([s["flux_ratio"] for s in sources])
    offsets = np.array([s["offset_beams"] for s in sources])
    flux_error = float(np.median(np.abs(ratios - 1))) if len(ratios) else float("nan")
    offset_beams = float(np.median(offsets)) if len(offsets) else float("nan")
    passed = bool(
        len(sources) > 0 and flux_error <= settings.max_flux_error and offset_beams <= settings.max_offset_beams
    )
    metrics = {
        "rms_jy": rms,
        "peak_jy": peak,
        "dynamic_range": peak / rms if rms > 0 else float("nan"),
        "beam_arcsec": {"bmaj": bmaj * 3600, "bmin": bmin * 3600, "bpa_deg": bpa},
        "n_sources": len(sources),
        "flux_ratio_median": float(np.median(ratios)) if len(ratios) else float("nan"),
        "flux_error_median": flux_error,
        "offset_arcsec_median": float(np.median([s["offset_arcsec"] for s in sources])) if sources else float("nan"),
        "offset_beams_median": offset_beams,
        "passed": passed,
        "sources": sources,
    }
    metrics.update(extra or {})
    return metrics


def qa_figure(paths: dict[str, Path], metrics: dict, title: str):
    """The image with the measured catalog sources marked, and their flux ratios against expected flux."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, wcs, _ = read_fits_image(paths["image.pbcor"])
    fig = plt.figure(figsize=(12, 5.5))
    ax = fig.add_subplot(1, 2, 1, projection=wcs)
    rms = metrics["rms_jy"]
    ax.imshow(image, origin="lower", cmap="inferno", vmin=-3 * rms, vmax=max(30 * rms, 0.3 * metrics["peak_jy"]))
    for s in metrics["sources"]:
        ax.scatter(s["x"], s["y"], s=120, facecolors="none", edgecolors="cyan", linewidths=1.0)
    ax.set_xlabel("RA")
    ax.set_ylabel("Dec")
    ax.set_title(title, fontsize=9)
    ax2 = fig.add_subplot(1, 2, 2)
    if metrics["sources"]:
        exp = [s["expected_jy"] for s in metrics["sources"]]
        ratio = [s["flux_ratio"] for s in metrics["sources"]]
        ax2.scatter(exp, ratio, c=[s["offset_beams"] for s in metrics["sources"]], cmap="viridis")
        ax2.set_xscale("log")
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_ylim(0.7, 1.3)
    ax2.set_xlabel("expected flux (Jy, beam-weighted)")
    ax2.set_ylabel("measured / expected")
    ax2.set_title(
        f"rms {rms * 1e3:.2f} mJy, DR {metrics['dynamic_range']:.0f}, {metrics['n_sources']} sources, "
        f'median ratio {metrics["flux_ratio_median"]:.3f}, offset {metrics["offset_arcsec_median"]:.1f}"',
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def write_qa(metrics: dict, figure, qa_dir: Path, timestamp: str) -> dict[str, Path]:
    """``<qa_dir>/<timestamp>.metrics.json`` and ``.qa.png``, both staged and renamed."""
    qa_dir = Path(qa_dir)
    metrics_path = atomic_write_text(qa_dir / f"{timestamp}.metrics.json", json.dumps(metrics, indent=1, default=float))
    png = qa_dir / f"{timestamp}.qa.png"
    with atomic_path(png) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    return {"metrics": metrics_path, "png": png}
