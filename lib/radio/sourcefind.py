"""Source finding on one image with PyBDSF (``bdsf.process_image``), its catalogue kept as the record.

PyBDSF runs on the restored image (``<prefix>.image.fits``, flat noise, so its islands and
thresholds mean the same everywhere) in a scratch folder (it writes a log beside its input), with
its own background rms map. Its source list (``srl``: one row per source, Gaussians of one island
grouped) is written as FITS beside the image, ``<prefix>.srl.fits``, staged and renamed. Fluxes are
then corrected by the primary beam toward each source (``<prefix>.pb.fits``, labpipe's beam model);
sources where the beam is below ``min_pb`` are dropped (their corrected flux is mostly noise).
"""

from __future__ import annotations

import contextlib
import gc
import io
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput, ToolError
from labpipe.files import atomic_path
from labpipe.optional import require
from pydantic import BaseModel, Field


class SourceFindSettings(BaseModel):
    """How sources are found in an image (PyBDSF's ``process_image`` options)."""

    thresh_pix: float = Field(5.0, description="A source's peak must reach this many sigma (PyBDSF thresh_pix).")
    thresh_isl: float = Field(3.0, description="Islands extend down to this many sigma (PyBDSF thresh_isl).")
    rms_box: tuple[int, int] | None = Field(None, description="PyBDSF rms_box (size, step) px; empty: its choice.")
    min_pb: float = Field(0.1, description="Drop sources where the primary beam is below this.")
    ncores: int = Field(1, description="PyBDSF processes for Gaussian fitting.")
    options: dict = Field(default_factory=dict, description="Other process_image options, passed as they are.")


@dataclass
class Detection:
    """One source PyBDSF found (positions and sizes in degrees, fluxes in Jy, primary-beam corrected)."""

    index: int  # PyBDSF Source_id in this image
    ra_deg: float
    dec_deg: float
    ra_err_deg: float
    dec_err_deg: float
    peak_jy: float  # Jy/beam
    peak_err_jy: float
    total_jy: float
    total_err_jy: float
    maj_deg: float  # fitted FWHM (beam included)
    min_deg: float
    pa_deg: float
    maj_err_deg: float
    min_err_deg: float
    pa_err_deg: float
    local_rms_jy: float  # island rms, primary-beam corrected
    pb: float
    code: str  # S single Gaussian, M several in one source, C several sources in one island

    @property
    def position_err_deg(self) -> float:
        """The larger of the RA (on the sky) and Dec errors, at least 1e-7 deg."""
        return max(self.ra_err_deg, self.dec_err_deg, 1e-7)


@dataclass
class SourceList:
    """The sources of one image and where PyBDSF's catalogue of them is."""

    image: Path
    catalogue: Path
    detections: list[Detection] = field(default_factory=list)
    rms_jy: float = float("nan")  # median of PyBDSF's rms map
    seconds: float = 0.0

    def rows(self) -> list[dict]:
        return [asdict(d) for d in self.detections]


def _bdsf():
    bdsf = require("bdsf", "radio", "source finding")
    multi_proc = require("bdsf.multi_proc", "radio", "source finding")
    if not getattr(multi_proc.parallel_map, "labpipe_serial_one_core", False):
        multi_proc.parallel_map = _serial_on_one_core(multi_proc.parallel_map)
    return bdsf


def _serial_on_one_core(parallel_map):
    """PyBDSF's ``parallel_map`` that maps in this process when given one core.

    Its rms map forks a manager and a worker even for ``ncores=1`` (its Gaussian fitting already runs
    serially then). A fork gains nothing on one core, and in a process holding threads, database
    connections and CUDA-aware libraries (a worker, the test suite) the forked child died with exit code
    1, failing every image.
    """

    def serial_or_parallel(function, sequence, numcores=None, bar=None, weights=None):
        if numcores == 1:
            results = list(map(function, sequence))
            if bar is not None and bar.started:
                bar.stop()
            return results
        return parallel_map(function, sequence, numcores=numcores, bar=bar, weights=weights)

    serial_or_parallel.labpipe_serial_one_core = True
    return serial_or_parallel


def find_sources(image_fits: Path, pb_fits: Path | None, catalogue: Path, settings: SourceFindSettings) -> SourceList:
    """Run PyBDSF on ``image_fits``, write its source list to ``catalogue`` (FITS), return the detections.

    ``pb_fits``: the primary beam on the same grid (None: fluxes are not corrected). Raises
    ``InvalidInput`` for an unreadable image, ``ToolError`` when PyBDSF fails on it.
    """
    image_fits, catalogue = Path(image_fits), Path(catalogue)
    if not image_fits.is_file():
        raise InvalidInput(image_fits, "image not found", "image the group first")
    bdsf = _bdsf()
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="labpipe-bdsf-"))
    written = scratch / "srl.fits"
    try:
        local = scratch / "image.fits"
        local.symlink_to(image_fits.resolve())  # PyBDSF writes its log beside its input: keep it out of images/
        options = dict(quiet=True, thresh_isl=settings.thresh_isl, thresh_pix=settings.thresh_pix,
                       ncores=settings.ncores, **settings.options)  # fmt: skip
        if settings.rms_box:
            options["rms_box"] = tuple(settings.rms_box)
        # PyBDSF calls gc.collect() after each of its ~16 steps; in a process holding astropy, numba and
        # the rest, each takes ~0.4 s: freezing the heap first makes them cheap (measured 6.7 s -> 1.0 s)
        gc.freeze()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints even when quiet; stdout may carry JSON
                result = bdsf.process_image(str(local), **options)
                if result.nsrc > 0:
                    result.write_catalog(outfile=str(written), format="fits", catalog_type="srl", clobber=True)
        except Exception as exc:  # PyBDSF raises bare RuntimeErrors and more
            raise ToolError(image_fits, f"PyBDSF failed: {exc}", "check the image header and values") from exc
        finally:
            gc.unfreeze()
        rms = float(np.nanmedian(result.rms_arr)) if getattr(result, "rms_arr", None) is not None else float("nan")
        detections = _read_srl(written, pb_fits, settings.min_pb) if written.exists() else []
        with atomic_path(catalogue) as tmp:
            if written.exists():
                shutil.copyfile(written, tmp)
            else:
                _empty_catalogue(tmp)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return SourceList(image_fits, catalogue, detections, rms, time.perf_counter() - started)


def _empty_catalogue(path: Path) -> None:
    from astropy.table import Table

    Table(names=("Source_id", "RA", "DEC", "Total_flux", "Peak_flux"), dtype=("i8", "f8", "f8", "f8", "f8")).write(
        path, format="fits"
    )


def _read_srl(path: Path, pb_fits: Path | None, min_pb: float) -> list[Detection]:
    from astropy.table import Table

    table = Table.read(path)
    pb = np.ones(len(table))
    if pb_fits is not None:
        pb = primary_beam_at(pb_fits, np.asarray(table["RA"], float), np.asarray(table["DEC"], float))
    out = []
    for row, gain in zip(table, pb, strict=True):
        if not (np.isfinite(gain) and gain >= min_pb):
            continue
        cos_dec = math.cos(math.radians(float(row["DEC"])))
        out.append(
            Detection(
                index=int(row["Source_id"]), ra_deg=float(row["RA"]) % 360, dec_deg=float(row["DEC"]),
                ra_err_deg=float(row["E_RA"]) * cos_dec, dec_err_deg=float(row["E_DEC"]),
                peak_jy=float(row["Peak_flux"]) / gain, peak_err_jy=float(row["E_Peak_flux"]) / gain,
                total_jy=float(row["Total_flux"]) / gain, total_err_jy=float(row["E_Total_flux"]) / gain,
                maj_deg=float(row["Maj"]), min_deg=float(row["Min"]), pa_deg=float(row["PA"]),
                maj_err_deg=float(row["E_Maj"]), min_err_deg=float(row["E_Min"]), pa_err_deg=float(row["E_PA"]),
                local_rms_jy=float(row["Isl_rms"]) / gain, pb=float(gain), code=str(row["S_Code"]).strip(),
            )
        )  # fmt: skip
    return out


def primary_beam_at(pb_fits: Path, ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """The primary beam of a ``<prefix>.pb.fits`` at sky positions (bilinear; NaN off the image)."""
    from labpipe.radio.imaging import read_fits_image
    from scipy import ndimage

    pb, wcs, _ = read_fits_image(pb_fits)
    x, y = wcs.world_to_pixel_values(np.atleast_1d(ra_deg), np.atleast_1d(dec_deg))
    inside = (x >= 0) & (y >= 0) & (x <= pb.shape[1] - 1) & (y <= pb.shape[0] - 1)
    values = ndimage.map_coordinates(np.nan_to_num(pb), [np.asarray(y), np.asarray(x)], order=1, cval=np.nan)
    return np.where(inside, values, np.nan)
