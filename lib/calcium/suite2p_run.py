"""Run suite2p on one TIFF through its Python API, and read its outputs back as table rows.

suite2p converts the TIFF to a binary file on the scratch disk (``fast_disk``) and
registers, detects, extracts and deconvolves it in batches, so memory stays bounded on
long recordings (detection bins the movie to at most ``detection_bins`` frames). suite2p's
registration metrics read a sample of frames into memory (2000 frames below 5000 frames,
5000 from there on): labpipe computes them itself, with suite2p's function, on a fixed sample
of ``REGMETRICS_FRAMES`` frames (the same frames as suite2p below 5000 frames, so the same
metrics), so that step does not grow with the recording either. Its outputs (``ops.npy``,
``stat.npy``, ``F.npy``, ``Fneu.npy``, ``spks.npy``, ``iscell.npy``) are the record: written
into a staging folder and renamed into place whole, then kept in the blob store. The
registered binary is scratch unless kept.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.calcium.scanimage import ScanInfo
from labpipe.calcium.settings import Suite2pSettings
from labpipe.errors import InvalidInput, ToolError
from labpipe.files import atomic_path
from labpipe.optional import require

# suite2p's registration metrics run on recordings of at least this many frames...
REGMETRICS_MIN_FRAMES = 1500
# ...on this many frames, evenly spaced: what suite2p samples below 5000 frames (it takes 5000 above, which
# would hold 5000 frames x height x width in float32 several times over)
REGMETRICS_FRAMES = 2000
OUTPUT_FILES = ("ops.npy", "stat.npy", "F.npy", "Fneu.npy", "spks.npy", "iscell.npy")


def _suite2p():
    suite2p = require("suite2p", "calcium", "cell detection")
    logging.getLogger("suite2p").setLevel(logging.WARNING)
    return suite2p


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def run_suite2p(
    tiff: Path,
    output: Path,
    info: ScanInfo,
    settings: Suite2pSettings,
    scratch: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """suite2p's plane folder for ``tiff`` at ``output`` (made whole or not at all); returns ``output``.

    ``scratch`` holds the binary while suite2p runs (a fast local disk); it is emptied after.
    """
    suite2p = _suite2p()
    tiff, output = Path(tiff), Path(output)
    if info.planes != 1 or info.channels != 1:
        raise InvalidInput(
            tiff,
            f"{info.planes} planes x {info.channels} channels: only single-plane, "
            "single-channel recordings are processed",
            "split the planes before processing",
        )
    work = Path(scratch) / f"suite2p-{output.name}-{time.time_ns()}"
    if progress:
        progress(0, 2)
    try:
        with atomic_path(output) as staging:
            db = {
                "data_path": [str(tiff.parent)],
                "file_list": [tiff.name],
                "save_path0": str(work / "save"),
                "fast_disk": str(work / "fast"),
                "force_sktiff": True,  # tifffile reads every TIFF, ScanImage's or not
                "batch_size": settings.batch_size,
            }
            options = settings.suite2p(info.frame_rate, info.height, info.width)
            metrics = options["run"]["do_regmetrics"]
            options["run"]["do_regmetrics"] = False  # computed below on a bounded sample
            plane = work / "save" / "suite2p" / "plane0"
            try:
                with _quiet_warnings():
                    suite2p.run_s2p(db=db, settings=options)
                    if metrics:
                        add_registration_metrics(plane / "ops.npy", options["registration"])
            except Exception as exc:
                raise ToolError(tiff, f"suite2p failed: {type(exc).__name__}: {exc}", "see the worker log") from exc
            staging.mkdir()
            for name in OUTPUT_FILES:
                if not (plane / name).exists():
                    raise ToolError(tiff, f"suite2p wrote no {name}", "see the worker log")
                shutil.move(plane / name, staging / name)
            if settings.keep_binary:
                shutil.move(work / "fast" / "suite2p" / "plane0" / "data.bin", staging / "data.bin")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if progress:
        progress(2, 2)
    return output


class _EvenlySpaced:
    """``count`` evenly spaced frames of a movie, read only when indexed (for suite2p's ``get_pc_metrics``)."""

    def __init__(self, movie, count: int) -> None:
        self.movie = movie
        self.frames = np.linspace(0, movie.shape[0] - 1, min(count, movie.shape[0])).astype("int")
        self.shape = (len(self.frames), *movie.shape[1:])

    def __getitem__(self, index):
        return self.movie[self.frames[index]]


def add_registration_metrics(ops_file: Path, registration: dict) -> None:
    """suite2p's registration metrics (tPC, regPC, regDX) of the plane's registered binary into its ``ops.npy``.

    suite2p's own ``get_pc_metrics`` on ``REGMETRICS_FRAMES`` evenly spaced frames, skipped below
    ``REGMETRICS_MIN_FRAMES`` frames as suite2p skips it.
    """
    from suite2p import io
    from suite2p import registration as s2p_registration

    ops = np.load(ops_file, allow_pickle=True).item()
    movie = io.BinaryFile(Ly=ops["Ly"], Lx=ops["Lx"], filename=ops["reg_file"])
    try:
        if movie.shape[0] < REGMETRICS_MIN_FRAMES:
            return
        started = time.monotonic()
        sample = _EvenlySpaced(movie, REGMETRICS_FRAMES)
        ops["tPC"], ops["regPC"], ops["regDX"] = s2p_registration.get_pc_metrics(
            sample, yrange=ops["yrange"], xrange=ops["xrange"], settings=registration
        )
    finally:
        movie.close()
    ops["run"]["do_regmetrics"] = True
    ops["regmetrics_frames"] = len(sample.frames)
    ops.setdefault("plane_times", {})["registration_metrics"] = time.monotonic() - started
    np.save(ops_file, ops)


@dataclass
class Suite2pResult:
    """suite2p's outputs of one plane, loaded."""

    ops: dict
    stat: np.ndarray
    F: np.ndarray  # noqa: N815 - suite2p's names
    Fneu: np.ndarray  # noqa: N815
    spks: np.ndarray
    iscell: np.ndarray

    @classmethod
    def load(cls, folder) -> Suite2pResult:
        """From a plane folder (a path, or an object-store reference with ``open``)."""

        def read(name: str):
            if not isinstance(folder, str | Path):
                with folder.open(name) as handle:
                    return np.load(handle, allow_pickle=True)
            return np.load(Path(folder) / name, allow_pickle=True)

        return cls(
            read("ops.npy").item(),
            read("stat.npy"),
            read("F.npy"),
            read("Fneu.npy"),
            read("spks.npy"),
            read("iscell.npy"),
        )

    def motion_row(self) -> dict:
        ops = self.ops
        y, x = np.asarray(ops["yoff"], np.float32), np.asarray(ops["xoff"], np.float32)
        return dict(
            y_shifts=y,
            x_shifts=x,
            y_std=float(y.std()),
            x_std=float(x.std()),
            max_abs_shift=float(max(np.abs(y).max(initial=0), np.abs(x).max(initial=0))),
            nonrigid=bool(ops.get("registration", {}).get("nonrigid", False)),
            ref_image=np.asarray(ops["refImg"], np.float32),
            mean_image=np.asarray(ops["meanImg"], np.float32),
            enhanced_image=np.asarray(ops["meanImgE"], np.float32),
            max_projection=_full_frame(ops, ops.get("max_proj")),
            correlation_image=_full_frame(ops, ops.get("Vcorr")),
        )

    def roi_rows(self) -> list[dict]:
        rows = []
        for index, (roi, (is_cell, probability)) in enumerate(zip(self.stat, self.iscell, strict=True)):
            rows.append(
                dict(
                    roi_id=index,
                    npix=int(roi["npix"]),
                    center_y=float(roi["med"][0]),
                    center_x=float(roi["med"][1]),
                    ypix=np.asarray(roi["ypix"], np.int32),
                    xpix=np.asarray(roi["xpix"], np.int32),
                    weights=np.asarray(roi["lam"], np.float32),
                    is_cell=bool(is_cell),
                    cell_probability=float(probability),
                    compactness=float(roi.get("compact", np.nan)),
                    skew=float(roi.get("skew", np.nan)),
                )
            )
        return rows

    def fluorescence_row(self) -> dict:
        return dict(neuropil_coefficient=float(self.ops["extraction"]["neuropil_coefficient"]))

    def trace_rows(self) -> list[dict]:
        dff = self.dff()
        return [
            dict(
                roi_id=index,
                f=self.F[index].astype(np.float32),
                fneu=self.Fneu[index].astype(np.float32),
                dff=dff[index],
            )
            for index in range(len(self.F))
        ]

    def dff(self) -> np.ndarray:
        """dF/F of every ROI: F - c Fneu over the baseline suite2p's own preprocessing removes before OASIS."""
        import torch
        from suite2p.extraction import dcnv

        ops = self.ops
        corrected = (self.F - ops["extraction"]["neuropil_coefficient"] * self.Fneu).astype(np.float32)
        if not len(corrected):
            return corrected
        above = dcnv.preprocess(F=corrected.copy(), fs=ops["fs"], device=torch.device("cpu"), **ops["dcnv_preprocess"])
        baseline = corrected - above
        # the neuropil-subtracted baseline can approach zero: never divide by less than a tenth of F's mean
        floor = 0.1 * np.abs(self.F).mean(axis=1, keepdims=True) + 1e-6
        return (above / np.maximum(np.abs(baseline), floor)).astype(np.float32)


def suite2p_version() -> str:
    from importlib.metadata import version

    return version("suite2p")


def _full_frame(ops: dict, image) -> np.ndarray:
    """suite2p crops max_proj and Vcorr to the valid (never shifted out) range; put them back on the frame."""
    out = np.zeros((ops["Ly"], ops["Lx"]), np.float32)
    if image is None:
        return out
    image = np.asarray(image, np.float32)
    y0, x0 = int(ops["yrange"][0]), int(ops["xrange"][0])
    out[y0 : y0 + image.shape[0], x0 : x0 + image.shape[1]] = image
    return out
