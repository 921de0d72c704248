"""Settings of the calcium-imaging populations (a future block *is* each of these models).

Defaults are for a lab host on real recordings; ``small()`` is what tests use on a
2-core CPU (tiny stacks, short training).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Suite2pSettings(BaseModel):
    """How suite2p processes a plane: registration, detection, extraction, neuropil, OASIS deconvolution."""

    tau: float = Field(1.0, gt=0, description="Indicator decay time in seconds (GCaMP6s ~1.0, GCaMP6f ~0.4).")
    diameter: float = Field(12.0, gt=0, description="Expected soma diameter in pixels.")
    frame_rate: float | None = Field(
        None, gt=0, description="Frame rate per plane when the TIFF has no ScanImage header (Hz)."
    )
    nonrigid: bool = Field(True, description="Non-rigid (block-wise) registration after the rigid step.")
    block_size: int = Field(128, ge=16, description="Non-rigid block size in pixels (halved for small frames).")
    registration_metrics: bool = Field(
        True,
        description="Compute suite2p's registration metrics (PC drift), on 2000 frames evenly spaced (>= 1500 frames).",
    )
    detection_bins: int = Field(
        1000,
        ge=50,
        description="Frames the movie is binned to for ROI detection. Fixed so that detection memory "
        "(bins x height x width x 4 bytes) does not grow with the recording's length.",
    )
    threshold_scaling: float = Field(1.0, gt=0, description="suite2p's detection threshold scaling.")
    neuropil_coefficient: float = Field(0.7, ge=0, description="F - coefficient x Fneu before dF/F and OASIS.")
    batch_size: int = Field(500, ge=10, description="Frames per batch when writing, registering and extracting.")
    device: str = Field("cpu", description="Torch device for registration and extraction (cpu pool: cpu).")
    keep_binary: bool = Field(
        False, description="Keep suite2p's registered binary (data.bin, 2 bytes per pixel per frame) after the run."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Further suite2p settings, nested as suite2p names them."
    )

    def suite2p(self, frame_rate: float, height: int, width: int) -> dict:
        """suite2p's settings dictionary for a plane of this size and rate."""
        import suite2p

        block = min(self.block_size, max(16, min(height, width) // 2))
        settings = suite2p.default_settings()
        settings = _merge(
            settings,
            {
                "torch_device": self.device,
                "fs": float(frame_rate),
                "tau": self.tau,
                "diameter": [self.diameter, self.diameter],
                "run": {"do_regmetrics": self.registration_metrics},
                "io": {"delete_bin": False, "move_bin": False},
                "registration": {"nonrigid": self.nonrigid, "block_size": (block, block), "batch_size": 100},
                "detection": {"nbins": self.detection_bins, "threshold_scaling": self.threshold_scaling},
                "extraction": {"neuropil_coefficient": self.neuropil_coefficient, "batch_size": self.batch_size},
            },
        )
        return _merge(settings, self.overrides)

    @classmethod
    def small(cls, **overrides) -> Suite2pSettings:
        """For tests on small stacks: rigid only, no registration metrics."""
        return cls(**{"nonrigid": False, "registration_metrics": False, "batch_size": 200, **overrides})


class DenoiseSettings(BaseModel):
    """Self-supervised Noise2Void denoising (auto-denoise) of a stack before suite2p."""

    training_frames: int = Field(64, ge=4, description="Frames sampled across the recording to train on.")
    steps: int = Field(2000, ge=1, description="Training steps (one full batch of training frames per step).")
    patch: int = Field(128, ge=16, description="Training frames are cropped to patches of this size.")
    features: int = Field(32, ge=4, description="U-Net features in the first level.")
    levels: int = Field(3, ge=1, le=5, description="U-Net levels.")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate of the U-Net.")
    batch_frames: int = Field(32, ge=1, description="Frames denoised per inference batch.")
    device: str = Field("auto", description="auto (cuda if present), cuda, cpu.")
    cpu_threads: int | None = Field(None, ge=1, description="Torch threads on a CPU; empty: torch's default.")
    seed: int = Field(0, description="Random seed of patch sampling, masking and initial weights.")

    @classmethod
    def small(cls, **overrides) -> DenoiseSettings:
        """For tests on a 2-core CPU (~30 s): a tiny U-Net, 200 steps on 48x48 patches, one thread."""
        base = {"training_frames": 16, "steps": 200, "patch": 48, "features": 8, "levels": 2, "learning_rate": 3e-3}
        base["cpu_threads"] = 1
        return cls(**{**base, **overrides})


class SpikeSettings(BaseModel):
    """Spike inference from dF/F with a CASCADE-style 1-D convolutional network, trained on simulated truth."""

    window: int = Field(64, ge=8, description="Frames the network sees around each time point (CASCADE: 64).")
    training_traces: int = Field(2000, ge=10, description="Simulated ground-truth traces per model.")
    trace_seconds: float = Field(120.0, gt=1, description="Length of each simulated training trace.")
    epochs: int = Field(20, ge=1, description="Passes over the simulated training traces.")
    batch_size: int = Field(16, ge=1, description="Traces per step (small batches: more steps, measured better).")
    learning_rate: float = Field(1e-3, gt=0, description="Adam learning rate of the network.")
    smoothing: float = Field(0.2, gt=0, description="Gaussian sigma (s) of the target rate, as CASCADE trains.")
    tau_decay: float = Field(1.0, gt=0, description="Indicator decay assumed for the training data (s).")
    device: str = Field("auto", description="auto (cuda if present), cuda, cpu.")
    cpu_threads: int | None = Field(None, ge=1, description="Torch threads on a CPU; empty: torch's default.")
    seed: int = Field(0, description="Random seed of the simulated training data and initial weights.")

    @classmethod
    def small(cls, **overrides) -> SpikeSettings:
        """For tests on a 2-core CPU (~20 s): 128 traces of 40 s, 8 epochs of batch 8, one thread."""
        base = {"training_traces": 128, "trace_seconds": 40.0, "epochs": 8, "batch_size": 8, "learning_rate": 2e-3}
        base["cpu_threads"] = 1
        return cls(**{**base, **overrides})
