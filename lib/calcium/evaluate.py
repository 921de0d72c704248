"""Measures against simulated truth: ROI recall and precision, spike-rate correlation, denoising SNR."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment


@dataclass
class RoiMatch:
    recall: float  # active true cells found / active true cells
    precision: float  # detected cells matching a true cell / detected cells
    pairs: list[tuple[int, int]]  # (true cell, detected ROI)
    offset: tuple[float, float]  # registration offset (y, x) removed before matching


def registration_offset(mean_image: np.ndarray, truth_image: np.ndarray) -> tuple[float, float]:
    """(y, x) that moves the truth's frame onto suite2p's registered frame (its reference is not the truth's)."""
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(mean_image, truth_image, normalization=None)
    return float(shift[0]), float(shift[1])


def match_rois(
    truth_centers: np.ndarray,
    active: np.ndarray,
    roi_centers: np.ndarray,
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    max_distance: float = 5.0,
) -> RoiMatch:
    """One-to-one matching of detected ROI centres to true cell centres within ``max_distance`` pixels.

    Recall counts the active cells (silent cells cannot be found from activity); precision
    counts a detected ROI as right if it matches any true cell, active or not.
    """
    truth = np.asarray(truth_centers, float).reshape(-1, 2) + np.asarray(offset)
    rois = np.asarray(roi_centers, float).reshape(-1, 2)
    if not len(truth) or not len(rois):
        return RoiMatch(0.0 if len(active) else 1.0, 0.0 if len(rois) else 1.0, [], offset)
    distance = np.hypot(*(truth[:, None, :] - rois[None, :, :]).transpose(2, 0, 1))
    cost = np.where(distance <= max_distance, distance, 1e6)
    rows, cols = linear_sum_assignment(cost)
    pairs = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] < 1e6]
    found = {r for r, _ in pairs}
    recall = len(found & set(int(a) for a in active)) / max(len(active), 1)
    precision = len(pairs) / len(rois)
    return RoiMatch(recall, precision, pairs, offset)


def smoothed_rate(spikes: np.ndarray, frame_rate: float, sigma_s: float = 0.2) -> np.ndarray:
    """Spike rate (Hz) smoothed by a Gaussian of ``sigma_s`` seconds, as CASCADE's evaluation does."""
    return ndimage.gaussian_filter1d(np.asarray(spikes, np.float64) * frame_rate, sigma_s * frame_rate, axis=-1)


def rate_correlation(inferred: np.ndarray, spikes: np.ndarray, frame_rate: float, sigma_s: float = 0.2) -> float:
    """Median over cells of Pearson's r between smoothed inferred and true rates (cells that spiked only)."""
    inferred, spikes = np.atleast_2d(inferred), np.atleast_2d(spikes)
    values = []
    for estimate, truth in zip(inferred, spikes, strict=True):
        if truth.sum() == 0:
            continue
        a, b = smoothed_rate(estimate, frame_rate, sigma_s), smoothed_rate(truth, frame_rate, sigma_s)
        values.append(0.0 if a.std() == 0 else float(np.corrcoef(a, b)[0, 1]))
    return float(np.median(values)) if values else float("nan")


def snr_db(estimate: np.ndarray, clean: np.ndarray) -> float:
    """10 log10 of the clean signal's variance over the error's mean square (both after removing the mean gain)."""
    estimate, clean = np.asarray(estimate, np.float64), np.asarray(clean, np.float64)
    # a denoiser may return another scale and offset: compare after the best affine fit
    design = np.stack([estimate.ravel(), np.ones(estimate.size)], axis=1)
    coef, *_ = np.linalg.lstsq(design, clean.ravel(), rcond=None)
    error = design @ coef - clean.ravel()
    return float(10 * np.log10(clean.var() / max(np.mean(error**2), 1e-12)))
