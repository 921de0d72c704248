"""Imaging processing for two-photon .tif stacks: rigid motion correction, projections, ROIs, dF/F.

Plain scipy/scikit-image, so it runs on any CPU worker. Functions take and return
arrays; the DataJoint tables store what ``row()`` gives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput
from scipy import ndimage


def read_stack(path: Path) -> np.ndarray:
    """A (frames, height, width) float32 stack; names the file if it is not a readable 3-D TIFF."""
    import tifffile

    try:
        stack = tifffile.imread(path)
    except Exception as exc:
        raise InvalidInput(path, f"not a readable TIFF: {exc}", "re-export the stack from the acquisition PC") from exc
    if stack.ndim != 3 or min(stack.shape) < 2:
        raise InvalidInput(path, f"expected a (frames, height, width) stack, got shape {stack.shape}")
    return stack.astype(np.float32, copy=False)


def _parabolic(left: float, centre: float, right: float) -> float:
    denominator = left - 2 * centre + right
    return 0.0 if denominator == 0 else 0.5 * (left - right) / denominator


def _register(reference_fft: np.ndarray, frame: np.ndarray, max_shift: int, near=None, radius: int = 4) -> np.ndarray:
    """(y, x) shift that moves ``frame`` onto the reference.

    The cross-correlation peak is searched within +-max_shift, and first within
    ``radius`` of ``near`` (the previous frame's shift: motion is continuous, and a
    small window keeps one cell from being matched onto its neighbour); a peak on
    that window's edge means a real jump, so the full window is searched instead.
    The peak is refined to sub-pixel by a parabola.
    """
    corr = np.fft.fftshift(np.fft.ifft2(reference_fft * np.conj(np.fft.fft2(frame))).real)
    cy, cx = corr.shape[0] // 2, corr.shape[1] // 2
    lo = np.array([-max_shift, -max_shift])
    hi = np.array([max_shift, max_shift])
    if near is not None:
        centre = np.rint(near).astype(int)
        lo, hi = np.maximum(lo, centre - radius), np.minimum(hi, centre + radius)
    window = corr[cy + lo[0] : cy + hi[0] + 1, cx + lo[1] : cx + hi[1] + 1]
    py, px = np.unravel_index(np.argmax(window), window.shape)
    on_edge = near is not None and (
        (py in (0, window.shape[0] - 1) and abs(lo[0] + py) < max_shift)
        or (px in (0, window.shape[1] - 1) and abs(lo[1] + px) < max_shift)
    )
    if on_edge:
        return _register(reference_fft, frame, max_shift)
    shift = np.array([lo[0] + py, lo[1] + px], dtype=np.float64)
    if 0 < py < window.shape[0] - 1:
        shift[0] += _parabolic(window[py - 1, px], window[py, px], window[py + 1, px])
    if 0 < px < window.shape[1] - 1:
        shift[1] += _parabolic(window[py, px - 1], window[py, px], window[py, px + 1])
    return shift


def estimate_shifts(stack: np.ndarray, max_shift: int = 8, iterations: int = 2) -> np.ndarray:
    """Per-frame (y, x) shifts that register each frame to the stack's own template.

    Frames are smoothed (sigma 1 px) before correlation so that shot noise does not
    pull the peak; the template is refined once from the registered stack.
    """
    max_shift = int(min(max_shift, min(stack.shape[1:]) // 2 - 1))
    smooth = np.stack([ndimage.gaussian_filter(frame, 1.0) for frame in stack])
    smooth -= smooth.mean(axis=(1, 2), keepdims=True)
    template = smooth[: min(len(stack), 20)].mean(axis=0)
    shifts = np.zeros((len(stack), 2), dtype=np.float32)
    for _ in range(iterations):
        reference_fft = np.fft.fft2(template)
        previous = None
        for index, frame in enumerate(smooth):
            shifts[index] = previous = _register(reference_fft, frame, max_shift, near=previous)
        template = apply_shifts(smooth, shifts).mean(axis=0)
    return shifts


def apply_shifts(stack: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift each frame by its (y, x) in Fourier space (sub-pixel, no interpolation blur)."""
    out = np.empty_like(stack, dtype=np.float32)
    for index, (frame, shift) in enumerate(zip(stack, shifts, strict=True)):
        out[index] = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(frame), shift)).real
    return out


@dataclass
class MotionCorrectionResult:
    shifts: np.ndarray
    mean_image: np.ndarray
    max_image: np.ndarray

    def row(self) -> dict:
        return dict(
            n_frames=len(self.shifts),
            height=self.mean_image.shape[0],
            width=self.mean_image.shape[1],
            shifts=self.shifts,
            max_abs_shift=float(np.abs(self.shifts).max()) if len(self.shifts) else 0.0,
            mean_image=self.mean_image,
            max_image=self.max_image,
        )


def motion_correct(stack: np.ndarray, max_shift: int = 8) -> MotionCorrectionResult:
    shifts = estimate_shifts(stack, max_shift=max_shift)
    corrected = apply_shifts(stack, shifts)
    return MotionCorrectionResult(shifts, corrected.mean(axis=0), corrected.max(axis=0))


@dataclass
class SegmentationResult:
    labels: np.ndarray
    dff: np.ndarray
    centers: np.ndarray
    areas: np.ndarray

    def row(self) -> dict:
        return dict(n_rois=len(self.areas), labels=self.labels, dff=self.dff)

    def roi_rows(self) -> list[dict]:
        return [
            dict(
                roi_id=index + 1,
                center_y=float(center[0]),
                center_x=float(center[1]),
                area=int(area),
                peak_dff=float(self.dff[index].max()) if self.dff.shape[1] else 0.0,
            )
            for index, (center, area) in enumerate(zip(self.centers, self.areas, strict=True))
        ]


def correlation_image(stack: np.ndarray) -> np.ndarray:
    """Mean correlation of each pixel's trace with its 8 neighbours (active cells stand out)."""
    centred = stack - stack.mean(axis=0)
    norm = centred / (centred.std(axis=0) + 1e-6)
    kernel = np.ones((3, 3), dtype=np.float32)
    kernel[1, 1] = 0
    neighbour_sum = np.stack([ndimage.convolve(frame, kernel, mode="constant") for frame in norm])
    return (norm * neighbour_sum).mean(axis=0) / kernel.sum()


def dff_traces(stack: np.ndarray, labels: np.ndarray, baseline_percentile: float = 20) -> np.ndarray:
    """dF/F per ROI: mean fluorescence in the mask over a low-percentile baseline."""
    n_rois = int(labels.max())
    if n_rois == 0:
        return np.zeros((0, len(stack)), dtype=np.float32)
    flat = stack.reshape(len(stack), -1)
    index = labels.ravel()
    sums = np.stack([np.bincount(index, weights=frame, minlength=n_rois + 1)[1:] for frame in flat], axis=1)
    counts = np.bincount(index, minlength=n_rois + 1)[1:, None]
    fluorescence = sums / counts
    baseline = np.percentile(fluorescence, baseline_percentile, axis=1, keepdims=True)
    return ((fluorescence - baseline) / np.maximum(np.abs(baseline), 1e-6)).astype(np.float32)


def segment(stack: np.ndarray, min_area: int = 6, max_area: int = 400, threshold_sd: float = 3.0) -> SegmentationResult:
    """ROIs: regions of high local correlation, split between touching cells by a watershed
    seeded at the activity peaks; then their dF/F traces."""
    from skimage.feature import peak_local_max
    from skimage.measure import regionprops
    from skimage.segmentation import watershed

    corr = correlation_image(stack)
    background = np.median(corr)
    spread = 1.4826 * np.median(np.abs(corr - background)) + 1e-6
    mask = ndimage.binary_opening(corr > background + threshold_sd * spread)
    activity = ndimage.gaussian_filter(stack.std(axis=0), 1.0)
    peaks = peak_local_max(np.where(mask, activity, 0), min_distance=3, labels=ndimage.label(mask)[0])
    markers = np.zeros(mask.shape, dtype=np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    raw = watershed(-activity, markers, mask=mask)
    labels = np.zeros_like(raw, dtype=np.int32)
    centers, areas = [], []
    for region in regionprops(raw):
        if min_area <= region.area <= max_area:
            labels[raw == region.label] = len(areas) + 1
            centers.append(region.centroid)
            areas.append(region.area)
    return SegmentationResult(
        labels,
        dff_traces(stack, labels),
        np.asarray(centers, dtype=np.float32).reshape(-1, 2),
        np.asarray(areas, dtype=np.int32),
    )
