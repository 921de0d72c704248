"""Simulated V1-like neurons with known filters, and the natural-like images shown to them.

Each neuron is a linear-nonlinear unit: a Gabor filter ``w`` (orientation, spatial
frequency, phase, position, size drawn at random), an expected spike count
``scale * softplus(gain * w.x + bias)`` in a response window (about 8 spikes on average
to a natural-like image) and Poisson spike counts. Because the truth is known, the loop is measured against it:
the twin's prediction against the noise-free rate, an MEI against ``w``, and the
neuron's response to its MEI against the analytic optimum: under the norm constraint
``||x|| = c`` the rate is largest at ``x* = c w / ||w||`` (Cauchy-Schwarz, softplus
increasing), giving ``scale * softplus(gain * c * ||w|| + bias)``.

Images are pink noise (power ~ 1/f^2, like natural scenes), zero mean, every one
scaled to the same L2 norm ``c``: the MEI's norm budget is that of a natural image.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
SPIKES_PER_UNIT_DRIVE = 8.0  # expected spikes in the response window at softplus(drive) = 1
PINK = 0.5  # amplitude exponent: power ~ 1/f, pink noise proper


def image_norm(size: int = IMAGE_SIZE, contrast: float = 1.0) -> float:
    """L2 norm of every image: RMS contrast ``contrast`` per pixel."""
    return float(contrast * size)


def pink_noise(n: int, size: int = IMAGE_SIZE, *, seed: int = 0, exponent: float = PINK) -> np.ndarray:
    """``n`` images (n, size, size) float32 with amplitude ~ 1/f^exponent, zero mean, norm ``image_norm(size)``."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / size) ** exponent
    amplitude[0, 0] = 0.0
    spectrum = amplitude * (rng.normal(size=(n, size, size // 2 + 1)) + 1j * rng.normal(size=(n, size, size // 2 + 1)))
    images = np.fft.irfftn(spectrum, s=(size, size), axes=(1, 2))
    images -= images.mean(axis=(1, 2), keepdims=True)
    images *= image_norm(size) / np.linalg.norm(images.reshape(n, -1), axis=1)[:, None, None]
    return images.astype(np.float32)


def gabor(size: int, *, theta: float, freq: float, phase: float, cy: float, cx: float, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    y, x = yy - cy, xx - cx
    along = x * np.cos(theta) + y * np.sin(theta)
    envelope = np.exp(-(x**2 + y**2) / (2 * sigma**2))
    g = envelope * np.cos(2 * np.pi * freq * along + phase)
    g -= envelope * (g.sum() / envelope.sum())  # zero mean: the neuron ignores overall brightness
    return g / np.linalg.norm(g)


@dataclass
class SimulatedPopulation:
    """Neurons of one animal: unit ids, unit-norm filters (n, size, size), gains and biases."""

    animal_id: str
    unit_ids: list[str]
    filters: np.ndarray
    gain: np.ndarray
    bias: np.ndarray
    seed: int
    scale: float = SPIKES_PER_UNIT_DRIVE

    @property
    def size(self) -> int:
        return self.filters.shape[-1]

    def rates(self, images: np.ndarray) -> np.ndarray:
        """Noise-free rates (n_images, n_units) in expected spikes per presentation."""
        drive = images.reshape(len(images), -1) @ self.filters.reshape(len(self.unit_ids), -1).T
        return (self.scale * np.logaddexp(0.0, self.gain * drive + self.bias)).astype(np.float32)

    def respond(self, images: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """Spike counts (n_images, n_units): one noisy presentation of each image."""
        rng = np.random.default_rng(seed)
        return rng.poisson(self.rates(images)).astype(np.float32)

    def optimal_rate(self, norm: float | None = None) -> np.ndarray:
        """Rate at the analytic optimum ``x* = c w / ||w||`` (filters are unit norm)."""
        c = image_norm(self.size) if norm is None else norm
        return (self.scale * np.logaddexp(0.0, self.gain * c + self.bias)).astype(np.float32)

    def optimal_images(self, norm: float | None = None) -> np.ndarray:
        c = image_norm(self.size) if norm is None else norm
        return (self.filters * c).astype(np.float32)


def simulate_population(
    animal_id: str, n_units: int = 20, *, size: int = IMAGE_SIZE, seed: int = 0
) -> SimulatedPopulation:
    """A reproducible population: the same animal id and seed give the same neurons anywhere (rig and tests)."""
    digest = int(hashlib.sha256(f"{animal_id}:{seed}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(digest)
    filters = []
    for _ in range(n_units):
        filters.append(
            gabor(
                size,
                theta=rng.uniform(0, np.pi),
                freq=rng.uniform(0.08, 0.16),
                phase=rng.uniform(0, 2 * np.pi),
                cy=size / 2 + rng.uniform(-5, 5),
                cx=size / 2 + rng.uniform(-5, 5),
                sigma=rng.uniform(2.5, 4.0),
            )
        )
    filters = np.stack(filters).astype(np.float32)
    # a natural image drives each neuron's filter by about N(0, sd); set the gain so that sd spans the nonlinearity
    probe = pink_noise(512, size, seed=digest % 10_000)
    sd = (probe.reshape(512, -1) @ filters.reshape(n_units, -1).T).std(axis=0)
    gain = (rng.uniform(1.2, 1.8, n_units) / sd).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, n_units).astype(np.float32)
    unit_ids = [f"u{i:03d}" for i in range(n_units)]
    return SimulatedPopulation(animal_id, unit_ids, filters, gain, bias, seed)
