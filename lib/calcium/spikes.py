"""Spike inference from dF/F: a CASCADE-style network in torch, trained on simulated ground truth, and OASIS.

CASCADE (Rupprecht et al., Nat. Neurosci. 2021) predicts the spike rate at each time
point from a 64-frame window of dF/F with a small 1-D CNN (conv 31 -> conv 19 -> max-pool
-> conv 5 -> max-pool -> dense 10 -> linear), trained on ground truth resampled to the
recording's frame rate and noise level. CASCADE itself is TensorFlow and not on the
package registries; this is its published architecture in torch. Windowed max-pools are
written as dilated stride-1 pools (and the later layers dilated to match), which gives
the window network's output at every time point in one pass over the trace.

The training set is simulated, not CASCADE's recorded ground truth: Poisson spike trains
with bursts, a double-exponential calcium kernel with the indicator's decay, per-cell
amplitudes, Gaussian noise at the recording's standardised noise level
(nu = 100 x median|diff dF/F| / sqrt(frame rate)). Models are cached per frame rate,
noise level and settings, so a recording trains one only when no close one exists.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from labpipe.calcium.evaluate import smoothed_rate
from labpipe.calcium.settings import SpikeSettings
from labpipe.calcium.simulate import calcium_kernel, dff_from_spikes, noise_level, noisy_dff, spike_trains
from labpipe.errors import InvalidInput
from labpipe.files import atomic_path
from labpipe.optional import require


def _torch():
    return require("torch", "calcium", "spike inference")


def device_of(name: str, cpu_threads: int | None = None) -> str:
    """The torch device ``name`` stands for; on a CPU, ``cpu_threads`` threads (busy shared hosts: 1 is fastest)."""
    torch = _torch()
    if cpu_threads:
        torch.set_num_threads(cpu_threads)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def spike_net():
    """CASCADE's window network as a dilated fully-convolutional torch module (receptive field 64 frames)."""
    nn = _torch().nn
    return nn.Sequential(
        nn.Conv1d(1, 30, 31),
        nn.ReLU(),
        nn.Conv1d(30, 40, 19),
        nn.ReLU(),
        nn.MaxPool1d(2, stride=1),
        nn.Conv1d(40, 50, 5, dilation=2),
        nn.ReLU(),
        nn.MaxPool1d(2, stride=1, dilation=2),
        nn.Conv1d(50, 10, 1),
        nn.ReLU(),
        nn.Conv1d(10, 1, 2, dilation=4),
    )


RECEPTIVE_FIELD = 64  # 31 + 18 + 1 + 8 + 2 + 4
PAD_BEFORE, PAD_AFTER = 32, 31  # the window around time t is t-32 .. t+31, as CASCADE centres it


def _pad(traces: np.ndarray) -> np.ndarray:
    return np.pad(traces, ((0, 0), (PAD_BEFORE, PAD_AFTER)), mode="reflect")


@dataclass
class SpikeModel:
    """A trained network and what it was trained for."""

    frame_rate: float
    noise_level: float
    settings: SpikeSettings
    state: dict
    losses: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"cascade-torch fs={self.frame_rate:g}Hz nu={self.noise_level:.1f} tau={self.settings.tau_decay:g}s"

    def predict(self, dff: np.ndarray, *, chunk: int = 64) -> np.ndarray:
        """Spikes per frame (non-negative) for each row of ``dff`` (rows, frames)."""
        torch = _torch()
        net = spike_net()
        net.load_state_dict(self.state)
        device = device_of(self.settings.device, self.settings.cpu_threads)
        net.to(device).eval()
        dff = np.nan_to_num(np.atleast_2d(np.asarray(dff, np.float32)))
        out = np.empty(dff.shape, np.float32)
        with torch.inference_mode():
            for start in range(0, len(dff), chunk):
                batch = torch.from_numpy(_pad(dff[start : start + chunk])[:, None, :]).to(device)
                out[start : start + chunk] = net(batch)[:, 0, :].clamp_min(0).cpu().numpy()
        return out

    def save(self, path: Path) -> Path:
        torch = _torch()
        with atomic_path(path) as staging:
            torch.save(
                {
                    "frame_rate": self.frame_rate,
                    "noise_level": self.noise_level,
                    "settings": self.settings.model_dump(),
                    "state": self.state,
                    "losses": self.losses,
                },
                staging,
            )
        return path

    @classmethod
    def load(cls, path: Path) -> SpikeModel:
        data = _torch().load(path, map_location="cpu", weights_only=False)
        return cls(
            data["frame_rate"], data["noise_level"], SpikeSettings(**data["settings"]), data["state"], data["losses"]
        )


def ground_truth(
    rng: np.random.Generator,
    traces: int,
    frames: int,
    frame_rate: float,
    noise: float | tuple[float, float],
    tau_decay: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(noisy dF/F, spike counts) of simulated cells: varied rates, bursts, amplitudes and noise levels."""
    low, high = (noise, noise) if np.isscalar(noise) else noise
    dff = np.empty((traces, frames), np.float32)
    spikes = spike_trains(rng, traces, frames, frame_rate, rate_hz=0.6)
    for i in range(traces):
        kernel = calcium_kernel(frame_rate, 0.07, tau_decay * rng.uniform(0.8, 1.25), rng.uniform(0.1, 0.4))
        clean = dff_from_spikes(spikes[i : i + 1], kernel)[0]
        dff[i] = noisy_dff(rng, clean, frame_rate, rng.uniform(low, high))
    return dff, spikes


def train_model(
    frame_rate: float, noise: float, settings: SpikeSettings, *, progress: Callable[[int, int], None] | None = None
) -> SpikeModel:
    """Train on simulated traces at ``frame_rate`` with noise levels around ``noise`` (0.7x to 1.3x)."""
    torch = _torch()
    rng = np.random.default_rng(settings.seed)
    torch.manual_seed(settings.seed)
    frames = int(settings.trace_seconds * frame_rate)
    dff, spikes = ground_truth(
        rng, settings.training_traces, frames, frame_rate, (0.7 * noise, 1.3 * noise), settings.tau_decay
    )
    target = (smoothed_rate(spikes, frame_rate, settings.smoothing) / frame_rate).astype(np.float32)
    device = device_of(settings.device, settings.cpu_threads)
    net = spike_net().to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    inputs = torch.from_numpy(_pad(dff)[:, None, :])
    targets = torch.from_numpy(target[:, None, :])
    losses = []
    for epoch in range(settings.epochs):
        order = torch.randperm(len(inputs))
        total = 0.0
        for start in range(0, len(order), settings.batch_size):
            index = order[start : start + settings.batch_size]
            optimiser.zero_grad()
            loss = torch.nn.functional.mse_loss(net(inputs[index].to(device)), targets[index].to(device))
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(index)
        losses.append(total / len(order))
        if progress:
            progress(epoch + 1, settings.epochs)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return SpikeModel(frame_rate, noise, settings, state, losses)


def model_for(frame_rate: float, noise: float, settings: SpikeSettings, models: Path) -> SpikeModel:
    """A cached model for this frame rate and noise level (noise rounded to 0.5), trained on first use."""
    noise = max(0.5, round(noise * 2) / 2)
    fingerprint = hashlib.sha256(
        json.dumps([round(frame_rate, 3), noise, settings.model_dump(exclude={"device"})], sort_keys=True).encode()
    ).hexdigest()[:12]
    path = Path(models) / f"cascade-{frame_rate:g}Hz-nu{noise:g}-{fingerprint}.pt"
    if path.exists():
        model = SpikeModel.load(path)
        model.settings = settings
        return model
    model = train_model(frame_rate, noise, settings)
    return model.save(path) and model


def oasis(dff: np.ndarray, frame_rate: float, tau: float) -> np.ndarray:
    """suite2p's OASIS deconvolution of baseline-free traces (rows, frames)."""
    from suite2p.extraction import dcnv

    dff = np.ascontiguousarray(np.atleast_2d(dff), dtype=np.float32)
    return dcnv.oasis(F=dff, batch_size=500, tau=tau, fs=frame_rate)


@dataclass
class ActivityResult:
    noise_level: float
    model: str
    traces: dict[int, np.ndarray]


def infer_activity(
    method: str,
    traces: list[dict],
    frame_rate: float,
    *,
    results_of: Callable[[], object],
    settings: SpikeSettings,
    models: Path,
) -> ActivityResult:
    """Activity of each ROI's trace (``roi_id``, ``dff``) by ``method`` ('oasis': suite2p's, 'cascade')."""
    dff = (
        np.stack([np.asarray(t["dff"].load() if hasattr(t["dff"], "load") else t["dff"]) for t in traces])
        if traces
        else np.zeros((0, 0), np.float32)
    )
    nu = float(np.median(noise_level(dff, frame_rate))) if len(dff) else 0.0
    rois = [int(t["roi_id"]) for t in traces]
    if method == "oasis":
        result = results_of()
        tau = float(result.ops["tau"])
        return ActivityResult(nu, f"suite2p OASIS tau={tau:g}s", {r: result.spks[r].astype(np.float32) for r in rois})
    if method == "cascade":
        if not len(dff):
            return ActivityResult(nu, "cascade-torch (no ROIs)", {})
        model = model_for(frame_rate, nu, settings, models)
        return ActivityResult(nu, model.name, dict(zip(rois, model.predict(dff), strict=True)))
    raise InvalidInput(method, "unknown activity method", "use 'oasis' or 'cascade'")
