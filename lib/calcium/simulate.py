"""Realistic simulated two-photon recordings, written frame by frame as ScanImage writes them, with their truth.

A recording is a field of view of neurons (somata with a dimmer nucleus, GCaMP being
cytosolic), each spiking as a Poisson process; spikes reach the fluorescence through a
calcium kernel (fast rise, indicator decay); the neuropil is a smooth background with
its own slow activity; the field moves (a smooth random walk with occasional jumps);
photons are counted with shot noise (Poisson) on a detector offset. Frames are written
in chunks, so a 20,000-frame 512x512 stack never sits in memory.

The TIFF carries the metadata the way ScanImage (2016 and later) writes it: the
non-varying ``SI.*`` frame data in the Software tag, the per-frame varying data
(frame numbers, timestamps) in each page's ImageDescription. The truth (footprints,
spike counts, dF/F, shifts) goes to a separate ``.npz`` file that is never in the share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field
from scipy import ndimage, sparse

CHUNK_FRAMES = 250


class RecordingSpec(BaseModel):
    """What to simulate. Defaults: a GCaMP6s-like field at 30 Hz as a bench 2-photon setup records it."""

    frames: int = Field(1000, ge=10)
    height: int = Field(128, ge=16)
    width: int = Field(128, ge=16)
    cells: int = Field(40, ge=0)
    frame_rate: float = Field(30.0, gt=0, description="Hz (SI.hRoiManager.scanFrameRate)")
    zoom: float = Field(2.0, gt=0, description="SI.hRoiManager.scanZoomFactor")
    cell_diameter: float = Field(12.0, gt=2, description="pixels")
    rate_hz: float = Field(0.4, gt=0, description="median firing rate; cells' rates are log-normal around it")
    silent_fraction: float = Field(0.15, ge=0, le=1, description="cells that never spike (not findable by activity)")
    tau_rise: float = Field(0.07, gt=0, description="seconds")
    tau_decay: float = Field(1.0, gt=0, description="seconds (GCaMP6s ~1.0, GCaMP6f ~0.4)")
    dff_per_spike: float = Field(0.25, gt=0, description="peak dF/F of one spike")
    photons: float = Field(4.0, gt=0, description="mean photons per pixel per frame at a cell's resting brightness")
    neuropil: float = Field(0.35, ge=0, description="neuropil brightness relative to a resting cell")
    max_shift: float = Field(4.0, ge=0, description="pixels, largest excursion of the random walk")
    offset: int = Field(100, ge=0, description="detector offset added to every pixel (counts)")
    seed: int = 0


@dataclass
class RecordingTruth:
    """What the simulator put in. ``footprints`` is (cells, height*width), rows summing to 1 is not implied."""

    frame_rate: float
    shape: tuple[int, int, int]
    centers: np.ndarray  # (cells, 2) y, x in the unmoved field
    footprints: sparse.csr_matrix  # (cells, height*width) brightness weights
    spikes: np.ndarray  # (cells, frames) spike counts
    dff: np.ndarray  # (cells, frames) noiseless dF/F
    shifts: np.ndarray  # (frames, 2) integer y, x displacement of the field in each frame
    photons: float
    offset: int

    @property
    def active(self) -> np.ndarray:
        """Indices of cells that spiked at least 3 times (what activity-based detection can find)."""
        return np.flatnonzero(self.spikes.sum(axis=1) >= 3)

    def masks(self, threshold: float = 0.3) -> list[np.ndarray]:
        """Boolean masks (height, width) of each cell: pixels above ``threshold`` of its peak weight."""
        _, height, width = self.shape
        out = []
        for row in self.footprints:
            dense = row.toarray().reshape(height, width)
            out.append(dense > threshold * dense.max())
        return out

    def save(self, path: Path) -> Path:
        np.savez_compressed(
            path,
            frame_rate=self.frame_rate,
            shape=np.asarray(self.shape),
            centers=self.centers,
            footprints_data=self.footprints.data,
            footprints_indices=self.footprints.indices,
            footprints_indptr=self.footprints.indptr,
            spikes=self.spikes,
            dff=self.dff,
            shifts=self.shifts,
            photons=self.photons,
            offset=self.offset,
        )
        return path

    @classmethod
    def load(cls, path: Path) -> RecordingTruth:
        with np.load(path) as data:
            shape = tuple(int(v) for v in data["shape"])
            footprints = sparse.csr_matrix(
                (data["footprints_data"], data["footprints_indices"], data["footprints_indptr"]),
                shape=(len(data["centers"]), shape[1] * shape[2]),
            )
            return cls(
                float(data["frame_rate"]),
                shape,
                data["centers"],
                footprints,
                data["spikes"],
                data["dff"],
                data["shifts"],
                float(data["photons"]),
                int(data["offset"]),
            )


def calcium_kernel(frame_rate: float, tau_rise: float, tau_decay: float, dff_per_spike: float) -> np.ndarray:
    """dF/F of one spike, sampled at ``frame_rate``, peak ``dff_per_spike``, out to 6 decay constants."""
    t = np.arange(int(np.ceil(6 * tau_decay * frame_rate)) + 1) / frame_rate
    kernel = np.exp(-t / tau_decay) - np.exp(-t / tau_rise)
    return (dff_per_spike * kernel / kernel.max()).astype(np.float32)


def spike_trains(rng: np.random.Generator, cells: int, frames: int, frame_rate: float, rate_hz: float, silent=0.0):
    """Poisson spike counts per frame; rates log-normal around ``rate_hz``, some cells bursting, some silent."""
    rates = rate_hz * rng.lognormal(0.0, 0.6, cells)
    rates[rng.random(cells) < silent] = 0.0
    counts = rng.poisson(np.outer(rates, np.ones(frames)) / frame_rate)
    bursts = rng.random((cells, frames)) < (rates[:, None] / frame_rate) * 0.1
    counts[bursts] += rng.integers(2, 5, bursts.sum())
    return counts.astype(np.int16)


def dff_from_spikes(spikes: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Noiseless dF/F: spike counts convolved with the calcium kernel (causal)."""
    frames = spikes.shape[-1]
    out = np.empty(spikes.shape, dtype=np.float32)
    for i, train in enumerate(np.atleast_2d(spikes)):
        out[i] = np.convolve(train.astype(np.float32), kernel)[:frames]
    return out


def _footprint(height: int, width: int, cy: float, cx: float, radius: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices and weights of a soma: an ellipse with soft edges and a dimmer nucleus."""
    reach = int(np.ceil(radius * 1.6))
    y0, y1 = max(0, int(cy) - reach), min(height, int(cy) + reach + 1)
    x0, x1 = max(0, int(cx) - reach), min(width, int(cx) + reach + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    squash = rng.uniform(0.8, 1.2)
    dy, dx = yy - cy, xx - cx
    u = (dy * np.cos(angle) + dx * np.sin(angle)) * squash
    v = (-dy * np.sin(angle) + dx * np.cos(angle)) / squash
    r = np.hypot(u, v) / radius
    weight = 1.0 / (1.0 + np.exp((r - 1.0) / 0.12))  # soft-edged disk
    weight *= 1.0 - 0.55 * np.exp(-((r / 0.45) ** 2))  # nucleus excludes GCaMP
    keep = weight > 0.02
    return (yy[keep].astype(int) * width + xx[keep].astype(int)), weight[keep].astype(np.float32)


def _cell_centres(rng, cells: int, height: int, width: int, diameter: float) -> np.ndarray:
    margin = diameter
    centres: list[np.ndarray] = []
    attempts = 0
    while len(centres) < cells and attempts < 200 * max(cells, 1):
        attempts += 1
        c = rng.uniform([margin, margin], [height - margin, width - margin])
        if all(np.hypot(*(c - o)) > 1.1 * diameter for o in centres):
            centres.append(c)
    return np.asarray(centres, dtype=np.float32).reshape(-1, 2)


def _motion(rng, frames: int, frame_rate: float, max_shift: float) -> np.ndarray:
    """A smooth random walk (breathing, posture) with a few abrupt jumps (licks, startles), in whole pixels."""
    if max_shift == 0:
        return np.zeros((frames, 2), dtype=np.int16)
    walk = np.cumsum(rng.normal(0, 1, (frames, 2)), axis=0)
    walk = ndimage.gaussian_filter1d(walk, sigma=max(frame_rate / 3, 1), axis=0)
    walk -= walk.mean(axis=0)
    walk *= 0.6 * max_shift / max(np.abs(walk).max(), 1e-6)
    for start in rng.choice(frames, size=max(1, frames // 600), replace=False):
        walk[start : start + int(frame_rate // 2)] += rng.uniform(-0.4, 0.4, 2) * max_shift
    return np.clip(np.rint(walk), -max_shift, max_shift).astype(np.int16)


def _neuropil(rng, frames: int, frame_rate: float, shape: tuple[int, int], components: int = 4):
    """Spatial maps (components, h*w) and slow time courses (components, frames) of the neuropil."""
    height, width = shape
    maps = []
    for _ in range(components):
        field = ndimage.gaussian_filter(rng.random(shape), sigma=max(height, width) / 8)
        field = (field - field.min()) / (np.ptp(field) + 1e-9)
        maps.append(field.ravel())
    courses = ndimage.gaussian_filter1d(rng.normal(0, 1, (components, frames)), sigma=frame_rate * 2, axis=1)
    courses -= courses.mean(axis=1, keepdims=True)
    courses = np.clip(1.0 + 0.15 * courses / (courses.std(axis=1, keepdims=True) + 1e-9), 0.5, 1.5)
    return np.asarray(maps, dtype=np.float32) / components, courses.astype(np.float32)


def scanimage_software_tag(spec: RecordingSpec) -> str:
    """The non-varying frame data as ScanImage writes it into the Software tag (MATLAB assignments)."""
    return "\n".join(
        [
            "SI.VERSION_MAJOR = 2022",
            "SI.VERSION_MINOR = 1",
            "SI.hChannels.channelSave = 1",
            "SI.hChannels.channelsActive = 1",
            f"SI.hRoiManager.linesPerFrame = {spec.height}",
            f"SI.hRoiManager.pixelsPerLine = {spec.width}",
            f"SI.hRoiManager.scanFrameRate = {spec.frame_rate:g}",
            f"SI.hRoiManager.scanVolumeRate = {spec.frame_rate:g}",
            f"SI.hRoiManager.scanZoomFactor = {spec.zoom:g}",
            "SI.hScan2D.bidirectional = true",
            "SI.hStackManager.enable = false",
            "SI.hStackManager.numSlices = 1",
            "SI.hStackManager.actualNumSlices = 1",
            f"SI.hStackManager.framesPerSlice = {spec.frames}",
            "SI.hFastZ.enable = false",
        ]
    )


def _frame_description(index: int, frame_rate: float) -> str:
    return (
        f"frameNumbers = {index + 1}\nacquisitionNumbers = 1\nframeNumberAcquisition = {index + 1}\n"
        f"frameTimestamps_sec = {index / frame_rate:.6f}\nacqTriggerTimestamps_sec = 0.000000\n"
        "nextFileMarkerTimestamps_sec = -1.000000\nendOfAcquisition = 0\nendOfAcquisitionMode = 0\n"
        "dcOverVoltage = 0\nepoch = [2026 2 10 14 3 12.5]\nauxTrigger0 = []\nauxTrigger1 = []\n"
        "I2CData = {}"
    )


def _join(parts: list) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)


class Recording:
    """A simulated recording: its truth, and any frame rendered with or without noise."""

    def __init__(self, spec: RecordingSpec) -> None:
        self.spec = spec
        rng = np.random.default_rng(spec.seed)
        height, width = spec.height, spec.width
        self.margin = int(np.ceil(spec.max_shift)) + 1
        canvas = (height + 2 * self.margin, width + 2 * self.margin)
        self.canvas = canvas
        centres = _cell_centres(rng, spec.cells, height, width, spec.cell_diameter)
        rows, cols, vals = [], [], []
        for i, (cy, cx) in enumerate(centres):
            index, weight = _footprint(*canvas, cy + self.margin, cx + self.margin, spec.cell_diameter / 2, rng)
            rows.append(np.full(len(index), i))
            cols.append(index)
            vals.append(weight * rng.uniform(0.7, 1.3))
        n = len(centres)
        self.canvas_footprints = sparse.csr_matrix(
            (
                np.concatenate(vals) if vals else [],
                (np.concatenate(rows) if rows else [], np.concatenate(cols) if cols else []),
            ),
            shape=(n, canvas[0] * canvas[1]),
            dtype=np.float32,
        )
        self.spikes = spike_trains(rng, n, spec.frames, spec.frame_rate, spec.rate_hz, spec.silent_fraction)
        kernel = calcium_kernel(spec.frame_rate, spec.tau_rise, spec.tau_decay, spec.dff_per_spike)
        self.dff = dff_from_spikes(self.spikes, kernel)
        self.shifts = _motion(rng, spec.frames, spec.frame_rate, spec.max_shift)
        self.neuropil_maps, self.neuropil_courses = _neuropil(rng, spec.frames, spec.frame_rate, canvas)
        vessels = ndimage.gaussian_filter(rng.random(canvas), 3) > 0.53  # dark blood vessels, anchors registration
        self.tissue = (1.0 - 0.5 * vessels).astype(np.float32).ravel()
        self.noise_seed = spec.seed + 1_000_003
        inner = (slice(self.margin, self.margin + height), slice(self.margin, self.margin + width))
        footprints = []
        for row in self.canvas_footprints:
            footprints.append(row.toarray().reshape(canvas)[inner].ravel())
        self.truth = RecordingTruth(
            spec.frame_rate,
            (spec.frames, height, width),
            centres,
            sparse.csr_matrix(np.asarray(footprints, dtype=np.float32).reshape(n, height * width)),
            self.spikes,
            self.dff,
            self.shifts,
            spec.photons,
            spec.offset,
        )

    def clean_frames(self, start: int, stop: int) -> np.ndarray:
        """Expected photon counts (no noise, no offset) of frames ``start:stop``, moved as recorded."""
        spec = self.spec
        height, width = spec.height, spec.width
        neuropil = (self.neuropil_courses[:, start:stop].T @ self.neuropil_maps) * spec.neuropil
        cells = self.canvas_footprints.T @ (1.0 + self.dff[:, start:stop])  # (pixels, frames)
        scene = (neuropil + cells.T) * self.tissue * spec.photons
        scene = scene.reshape(stop - start, *self.canvas)
        out = np.empty((stop - start, height, width), dtype=np.float32)
        for k, (dy, dx) in enumerate(self.shifts[start:stop]):
            y0, x0 = self.margin - dy, self.margin - dx
            out[k] = scene[k, y0 : y0 + height, x0 : x0 + width]
        return out

    def noisy_frames(self, start: int, stop: int) -> np.ndarray:
        """Detector counts (uint16): shot noise on the expected photons, plus the offset. Same every call."""
        rng = np.random.default_rng([self.noise_seed, start])
        counts = rng.poisson(self.clean_frames(start, stop)) + self.spec.offset
        return np.minimum(counts, np.iinfo(np.uint16).max).astype(np.uint16)


def write_recording(
    path: Path, spec: RecordingSpec, *, progress: Callable[[int, int], None] | None = None
) -> RecordingTruth:
    """Write ``spec`` as a ScanImage-like TIFF at ``path`` (chunked: memory does not grow with frames)."""
    import tifffile

    recording = Recording(spec)
    software = scanimage_software_tag(spec)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:  # ScanImage 2016+ writes BigTIFF
        for start in range(0, spec.frames, CHUNK_FRAMES):
            stop = min(start + CHUNK_FRAMES, spec.frames)
            for k, frame in enumerate(recording.noisy_frames(start, stop)):
                tif.write(
                    frame,
                    software=software,
                    description=_frame_description(start + k, spec.frame_rate),
                    photometric="minisblack",
                    metadata=None,
                    contiguous=False,
                )
            if progress:
                progress(stop, spec.frames)
    return recording.truth


def noisy_dff(rng: np.random.Generator, dff: np.ndarray, frame_rate: float, noise_level: float) -> np.ndarray:
    """dF/F with Gaussian noise at CASCADE's standardised noise level nu = median|diff(dF/F)| / sqrt(fs) (in %)."""
    # for white noise of sd s, median|diff| = 0.6745 * sqrt(2) * s; nu is in percent per sqrt(Hz)
    sd = noise_level / 100.0 * np.sqrt(frame_rate) / (0.6745 * np.sqrt(2))
    return (dff + rng.normal(0, sd, dff.shape)).astype(np.float32)


def noise_level(dff: np.ndarray, frame_rate: float) -> np.ndarray:
    """CASCADE's standardised noise level of each trace: 100 * median|diff(dF/F)| / sqrt(frame rate)."""
    return 100.0 * np.median(np.abs(np.diff(np.atleast_2d(dff), axis=-1)), axis=-1) / np.sqrt(frame_rate)
