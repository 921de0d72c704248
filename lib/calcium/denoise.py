"""Self-supervised denoising of a two-photon stack with Noise2Void (auto-denoise), before suite2p.

Noise2Void learns to predict each pixel from its neighbours with the pixel itself
hidden (blind spot), so it needs no clean images: shot noise, independent from pixel to
pixel, cannot be predicted and is removed; the cells, neuropil and vessels, correlated
over several pixels, are kept. CAREamics (the issue's suggestion) pins pydantic<=2.14.1
in every release and cannot be installed beside labpipe's pydantic 2.14.3; auto-denoise
(CEA, MIT, torch) implements the same Noise2Void and installs cleanly.

Memory stays bounded: training uses ``training_frames`` frames sampled across the
recording (cropped to patches), and inference streams ``batch_frames`` frames at a time
from the input TIFF to the output TIFF.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from labpipe.calcium.scanimage import check_pages
from labpipe.calcium.settings import DenoiseSettings
from labpipe.calcium.spikes import device_of
from labpipe.files import atomic_path
from labpipe.optional import require


def _n2v(settings: DenoiseSettings, device: str):
    N2V = require("autoden.algorithms.noise2void", "calcium", "denoising").N2V
    NetworkParamsUNet = require("autoden.models.config", "calcium", "denoising").NetworkParamsUNet
    network = NetworkParamsUNet(n_levels=settings.levels, n_features=settings.features)
    return N2V(network, device=device, verbose=False)


def pixel_noise(frames: np.ndarray) -> float:
    """Noise sd from pixel-to-pixel differences (MAD of horizontal neighbours' difference / sqrt 2)."""
    diff = np.diff(np.asarray(frames, np.float32), axis=-1)
    return float(1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2))


def _read(tiff, start: int, stop: int) -> np.ndarray:
    return np.stack([tiff.pages[i].asarray() for i in range(start, stop)]).astype(np.float32)


@dataclass
class DenoiseResult:
    path: Path
    noise_before: float
    noise_after: float
    final_loss: float
    device: str
    seconds: float
    settings: DenoiseSettings

    def row(self) -> dict:
        return dict(
            method="noise2void (auto-denoise)",
            settings=self.settings.model_dump(),
            denoised=str(self.path),
            noise_before=self.noise_before,
            noise_after=self.noise_after,
            final_loss=self.final_loss,
            device=self.device,
            duration_s=self.seconds,
        )


def train_denoiser(tiff_path: Path, settings: DenoiseSettings):
    """A Noise2Void model trained on frames sampled across ``tiff_path``; returns (model, final test loss)."""
    import tifffile
    import torch

    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    pages, (height, width), _ = check_pages(tiff_path)
    picks = np.sort(rng.choice(pages, size=min(settings.training_frames, pages), replace=False))
    patch = min(settings.patch, height, width)
    with tifffile.TiffFile(tiff_path) as tif:
        crops = []
        for index in picks:
            y, x = rng.integers(0, height - patch + 1), rng.integers(0, width - patch + 1)
            crops.append(tif.pages[int(index)].asarray()[y : y + patch, x : x + patch].astype(np.float32))
    data = np.stack(crops)
    device = device_of(settings.device, settings.cpu_threads)
    model = _n2v(settings, device)
    # auto-denoise draws its test frames and blind spots from numpy's global generator: seeded here (and put back
    # after), or two trainings on the same stack differ, and so do the cells suite2p finds in the result
    state = np.random.get_state()
    np.random.seed(settings.seed)
    try:
        inp, test = model.prepare_data(data, num_tst_ratio=0.2)
        quiet = io.StringIO()
        with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):  # it prints its progress
            losses = model.train(inp, test, epochs=settings.steps, learning_rate=settings.learning_rate)
    finally:
        np.random.set_state(state)
    return model, float(np.min(losses["loss_tst"]))


def denoise_stack(
    tiff_path: Path, output: Path, settings: DenoiseSettings, *, progress: Callable[[int, int], None] | None = None
) -> DenoiseResult:
    """Train on ``tiff_path`` and write its denoised frames (float32 TIFF) to ``output``, whole or not at all."""
    import tifffile

    started = time.monotonic()
    tiff_path = Path(tiff_path)
    model, loss = train_denoiser(tiff_path, settings)
    pages, _, _ = check_pages(tiff_path)
    before, after = [], []
    with tifffile.TiffFile(tiff_path) as tif, atomic_path(Path(output)) as staging:
        software = tif.pages.first.software  # keep ScanImage's header: the frame rate travels with the stack
        with tifffile.TiffWriter(staging, bigtiff=True) as writer:
            for start in range(0, pages, settings.batch_frames):
                stop = min(start + settings.batch_frames, pages)
                frames = _read(tif, start, stop)
                clean = np.atleast_3d(model.infer(frames)).reshape(frames.shape).astype(np.float32)
                if start == 0:
                    before.append(pixel_noise(frames))
                    after.append(pixel_noise(clean))
                for frame in clean:
                    writer.write(frame, software=software, photometric="minisblack", metadata=None, contiguous=False)
                if progress:
                    progress(stop, pages)
    return DenoiseResult(Path(output), before[0], after[0], loss, model.device, time.monotonic() - started, settings)


def denoise_frames(model, frames: np.ndarray) -> np.ndarray:
    """Denoise frames in memory with a trained model (the benchmark's SNR measurement)."""
    return np.asarray(model.infer(np.asarray(frames, np.float32)), np.float32).reshape(np.shape(frames))
