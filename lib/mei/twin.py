"""The digital twin: a small CNN that predicts every recorded neuron's response to an image.

Core: three convolution layers (BatchNorm, ELU) shared by all neurons. Readout: per
neuron a spatial mask and feature weights (a factorised readout), then softplus, so
predictions are rates. Trained with the Poisson loss on (image, response) pairs,
early-stopped on a validation split, checkpointed every epoch so a killed run resumes.

The readout is written with ``matmul``, not ``einsum``: with torch 2.14.1 on the CPU an
einsum readout hands ``BatchNorm2d`` (eval mode) a non-contiguous gradient, and the
input gradient of a *single* image comes out wrong (MEIs optimised one image at a
time become noise; batches of two or more are right). ``tests/lib/mei`` checks the
single-image gradient against the batched one.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import InvalidInput, LabpipeError
from labpipe.files import atomic_path, atomic_write_text
from labpipe.optional import require


def torch_module():
    """torch, with one thread per process unless LABPIPE_TORCH_THREADS says more."""
    torch = require("torch", "mei", "the MEI twin")
    # small models on shared cores: one thread each (more threads only spin against other work);
    # LABPIPE_TORCH_THREADS raises it on a dedicated host
    threads = max(1, int(os.environ.get("LABPIPE_TORCH_THREADS", "1")))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch


def device():
    """``cuda`` when a GPU is there and ``LABPIPE_DEVICE`` is not ``cpu``; else the CPU.

    ``labpipe up`` sets ``LABPIPE_DEVICE=cpu`` for gpu-pool workers on hosts without a GPU.
    Only the CPU path runs on the development machine; on a GPU host the same code moves
    the model and each batch to ``cuda`` (expect about 10-50x faster training).
    """
    torch = torch_module()
    wanted = os.environ.get("LABPIPE_DEVICE", "auto")
    if wanted == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda" if wanted == "auto" else wanted)


def model_device(model):
    return next(model.parameters()).device


@dataclass
class TwinConfig:
    """Architecture and training settings; part of the model id in the registry."""

    channels: int = 8
    kernels: tuple[int, int, int] = (9, 5, 5)
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 6e-3
    weight_decay: float = 0.0
    readout_l1: float = 0.1
    smoothness: float = 1e-2
    validation_fraction: float = 0.1
    seed: int = 0

    def as_dict(self) -> dict:
        data = asdict(self)
        data["kernels"] = list(self.kernels)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TwinConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "kernels" in known:
            known["kernels"] = tuple(known["kernels"])
        return cls(**known)


def build_twin(n_units: int, size: int, config: TwinConfig):
    """The twin network for ``n_units`` neurons on ``size`` x ``size`` images."""
    torch = torch_module()
    nn = torch.nn

    class Readout(nn.Module):
        """Per neuron: a spatial mask over the core's output, channel weights, a bias.

        Trained with an L1 penalty on mask x channel weights: the mask becomes sparse and
        local, where a dense one would carry noise far from the receptive field that an MEI
        at full contrast would exploit.
        """

        def __init__(self) -> None:
            super().__init__()
            self.spatial = nn.Parameter(torch.full((n_units, size * size), 1.0 / (size * size)))
            self.features = nn.Parameter(torch.randn(n_units, config.channels) / config.channels**0.5)
            self.bias = nn.Parameter(torch.zeros(n_units))

        def penalty(self):
            return (self.spatial.abs().sum(dim=1) * self.features.abs().sum(dim=1)).mean()

        def forward(self, x):
            b, c = x.shape[:2]
            # (b, c, hw) @ (hw, n) -> (b, c, n); then weight channels per neuron. matmul, not einsum (see above).
            pooled = torch.matmul(x.reshape(b, c, -1), self.spatial.t())
            return (pooled * self.features.t().unsqueeze(0)).sum(dim=1) + self.bias

    class Twin(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers, channels_in = [], 1
            for k in config.kernels:
                layers += [
                    nn.Conv2d(channels_in, config.channels, k, padding=k // 2, bias=False),
                    nn.BatchNorm2d(config.channels),
                    nn.ELU(),
                ]
                channels_in = config.channels
            self.core = nn.Sequential(*layers)
            self.readout = Readout()

        def forward(self, images):
            return torch.nn.functional.softplus(self.readout(self.core(images.unsqueeze(1))))

    torch.manual_seed(config.seed)
    return Twin()


@dataclass
class TrainingResult:
    """What a finished training run reports (also written beside the checkpoint)."""

    epochs: int
    final_loss: float
    duration_sec: float
    history: list[dict] = field(default_factory=list)  # per epoch: train_loss, val_loss, val_corr
    resumed_from_epoch: int = 0


def per_unit_correlation(prediction: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson correlation per column (unit); 0 where either is constant; NaN targets ignored."""
    out = np.zeros(prediction.shape[1], dtype=np.float64)
    for j in range(prediction.shape[1]):
        ok = np.isfinite(target[:, j])
        p, t = prediction[ok, j], target[ok, j]
        if ok.sum() > 2 and p.std() > 0 and t.std() > 0:
            out[j] = np.corrcoef(p, t)[0, 1]
    return out


def predict(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    torch = torch_module()
    model.eval()
    with torch.no_grad():
        dev = model_device(model)
        out = [
            model(torch.from_numpy(images[i : i + batch_size]).to(dev)).cpu().numpy()
            for i in range(0, len(images), batch_size)
        ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _save_checkpoint(path: Path, model, optimizer, scheduler, epoch: int, history: list[dict], meta: dict) -> None:
    torch = torch_module()
    with atomic_path(path) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": history,
                "meta": meta,
            },
            tmp,
        )


def train_twin(
    images: np.ndarray,
    responses: np.ndarray,
    config: TwinConfig,
    workdir: Path,
    *,
    progress: Callable[[int, int], None] | None = None,
    stop_after_epoch: int | None = None,
) -> tuple[object, TrainingResult]:
    """Train (or resume) a twin in ``workdir``; returns the best model by validation loss and the facts.

    ``workdir/last.pt`` is rewritten atomically after every epoch; a run started
    again with the same data and config resumes from it. ``responses`` may hold NaN
    where a neuron was not recorded for an image (masked out of the loss).
    ``stop_after_epoch`` ends early (tests use it to simulate a killed run).
    """
    torch = torch_module()
    images = np.ascontiguousarray(images, dtype=np.float32)
    responses = np.ascontiguousarray(responses, dtype=np.float32)
    if images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InvalidInput("images", f"expected (n, size, size) square images, got shape {images.shape}")
    if responses.shape[0] != images.shape[0]:
        raise InvalidInput("responses", f"{responses.shape[0]} rows for {images.shape[0]} images")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob(".*.part"):  # staging left by a run killed while writing a checkpoint
        shutil.rmtree(stale, ignore_errors=True)
    n, size = images.shape[0], images.shape[1]
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    n_val = max(1, int(round(config.validation_fraction * n)))
    val_idx, train_idx = order[:n_val], order[n_val:]
    mask = np.isfinite(responses)
    targets = np.nan_to_num(responses)
    dev = device()
    model = build_twin(responses.shape[1], size, config).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    # cosine decay to a tenth over the run: settles the fit in the last epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(e, config.epochs) / config.epochs))
    )
    meta = {
        "config": config.as_dict(),
        "n_units": responses.shape[1],
        "size": size,
        "data": _data_key(images, responses),
    }
    history: list[dict] = []
    start_epoch, resumed = 0, 0
    last = workdir / "last.pt"
    if last.exists():
        state = torch.load(last, weights_only=False, map_location=dev)
        if state["meta"] == meta:  # the same run: pick up where it stopped
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch = resumed = state["epoch"]
            history = state["history"]
    best = min(history, key=lambda h: h["val_loss"]) if history else None
    x_all, y_all, m_all = (torch.from_numpy(a).to(dev) for a in (images, targets, mask))
    started = time.monotonic() - sum(h["seconds"] for h in history)

    def poisson_loss(pred, y, m):
        return ((pred - y * torch.log(pred + 1e-6)) * m).sum() / m.sum().clamp(min=1)

    for epoch in range(start_epoch, config.epochs):
        t0 = time.monotonic()
        model.train()
        # each epoch's shuffle depends only on (seed, epoch): a resumed run trains exactly as an unbroken one
        perm = torch.from_numpy(np.random.default_rng([config.seed, epoch]).permutation(train_idx)).to(dev)
        losses = []
        for i in range(0, len(perm), config.batch_size):
            idx = perm[i : i + config.batch_size]
            if len(idx) < 2:  # BatchNorm needs two images to train on
                continue
            pred = model(x_all[idx])
            loss = poisson_loss(pred, y_all[idx], m_all[idx])
            loss = loss + config.readout_l1 * model.readout.penalty()
            loss = loss + config.smoothness * _laplace_penalty(torch, model.core[0].weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        scheduler.step()
        model.eval()
        with torch.no_grad():
            val_pred = model(x_all[torch.from_numpy(val_idx).to(dev)]).cpu()
            val_loss = float(poisson_loss(val_pred, y_all[val_idx], m_all[val_idx]))
        val_corr = per_unit_correlation(val_pred.numpy(), np.where(mask[val_idx], targets[val_idx], np.nan))
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(losses)),
                "val_loss": val_loss,
                "val_corr": float(np.mean(val_corr)),
                "seconds": time.monotonic() - t0,
            }
        )
        if best is None or val_loss <= best["val_loss"]:
            best = history[-1]
            with atomic_path(workdir / "best.pt") as tmp:
                torch.save(model.state_dict(), tmp)
        _save_checkpoint(last, model, optimizer, scheduler, epoch + 1, history, meta)
        if progress:
            progress(epoch + 1, config.epochs)
        if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < config.epochs:
            raise TrainingInterrupted(workdir, epoch + 1)
    model.load_state_dict(torch.load(workdir / "best.pt", weights_only=True, map_location=dev))
    model.eval()
    result = TrainingResult(
        epochs=config.epochs,
        final_loss=history[-1]["train_loss"],
        duration_sec=time.monotonic() - started,
        history=history,
        resumed_from_epoch=resumed,
    )
    return model, result


def _laplace_penalty(torch, weight):
    """Roughness of the first layer's kernels: smooth filters generalise, and give smooth MEIs."""
    laplace = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]).view(1, 1, 3, 3)
    rough = torch.nn.functional.conv2d(weight.reshape(-1, 1, *weight.shape[-2:]), laplace)
    return (rough**2).sum() / (weight**2).sum().clamp(min=1e-8)


class TrainingInterrupted(LabpipeError):
    """A run stopped before its last epoch (its checkpoint is kept for a resume)."""

    def __init__(self, workdir: Path, epoch: int) -> None:
        super().__init__(f"training in {workdir}", f"stopped after epoch {epoch}", "run it again: it resumes there")
        self.workdir, self.epoch = workdir, epoch

    def __reduce__(self):
        return (self.__class__, (self.workdir, self.epoch))


def _data_key(images: np.ndarray, responses: np.ndarray) -> str:
    import hashlib

    digest = hashlib.sha256(images.tobytes())
    digest.update(np.nan_to_num(responses, nan=-1.0).tobytes())
    return digest.hexdigest()[:16]


TWIN_FILE = "twin.pt"
META_FILE = "twin.json"


def save_twin(model, folder: Path, *, unit_ids: list[str], animal_id: str, config: TwinConfig, extra: dict) -> Path:
    """Write the publishable model folder: ``twin.pt`` (weights) and ``twin.json`` (how to rebuild it)."""
    torch = torch_module()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    size = int(np.sqrt(model.readout.spatial.shape[1]))
    with atomic_path(folder / TWIN_FILE) as tmp:
        torch.save(model.state_dict(), tmp)
    meta = {"animal_id": animal_id, "unit_ids": unit_ids, "size": size, "config": config.as_dict(), **extra}
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1, sort_keys=True))
    return folder


@dataclass
class LoadedTwin:
    model: object
    unit_ids: list[str]
    animal_id: str
    size: int
    meta: dict

    def unit_index(self, unit_id: str) -> int:
        try:
            return self.unit_ids.index(unit_id)
        except ValueError:
            raise InvalidInput(unit_id, f"not a unit of this twin (units {self.unit_ids[:5]}...)") from None


def load_twin(folder: Path) -> LoadedTwin:
    """Rebuild a twin from its model folder (a registry cache folder)."""
    torch = torch_module()
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.exists():
        raise InvalidInput(folder, f"not a twin model folder: {META_FILE} missing")
    meta = json.loads(meta_path.read_text())
    model = build_twin(len(meta["unit_ids"]), meta["size"], TwinConfig.from_dict(meta["config"]))
    model.load_state_dict(torch.load(folder / TWIN_FILE, weights_only=True, map_location="cpu"))
    model = model.to(device()).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedTwin(model, meta["unit_ids"], meta["animal_id"], meta["size"], meta)
