"""How much memory a segmentation run needs, checked before any tile is predicted.

Per worker (on its GPU, or in host RAM on a CPU host): the network's weights,
its feature maps for one window (nnU-Net's ``compute_conv_feature_map_size``:
every convolution output, an upper bound for inference, which frees them as it
goes), the window and its logits; on CUDA 2 bytes per feature (autocast) plus
the CUDA context. On disk (scratch): float16 logit sums and weights for the
padded volume and the uint8 labels; in the artifacts root: the masks.
The figures are estimates; a GPU out-of-memory error during the run still
fails it with the same hint.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from labpipe.errors import ToolError

GiB = 1 << 30
CUDA_CONTEXT_BYTES = 600 << 20  # CUDA context + cuDNN workspace, measured typically 0.4-0.8 GiB
HINT = "run fewer Dask workers per GPU (one per GPU), use a model with a smaller patch size, or free the device"


class OutOfMemory(ToolError):
    """A run needs more memory than the device or host has (before or during the run)."""


@dataclass
class MemoryEstimate:
    device: str
    workers: int
    per_worker_bytes: int
    scratch_bytes: int
    artifact_bytes: int
    feature_map_elements: int
    parameters: int

    def as_json(self) -> dict:
        data = asdict(self)
        data["per_worker_gib"] = round(self.per_worker_bytes / GiB, 3)
        return data

    def describe(self) -> str:
        where = "GPU" if self.device.startswith("cuda") else "host RAM"
        return (
            f"~{self.per_worker_bytes / GiB:.2f} GiB of {where} per worker x {self.workers}, "
            f"{self.scratch_bytes / GiB:.2f} GiB scratch, {self.artifact_bytes / GiB:.2f} GiB artifacts"
        )


def _network(model_folder: Path, configuration: str, num_classes: int):
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = json.loads((model_folder / "plans.json").read_text())
    arch = plans["configurations"][configuration]["architecture"]
    return get_network_from_plans(
        arch["network_class_name"],
        arch["arch_kwargs"],
        arch["_kw_requires_import"],
        1,
        num_classes,
        allow_init=False,
        deep_supervision=False,
    )


def estimate_memory(plan, model, device: str, workers: int) -> MemoryEstimate:
    """Estimate from the model's plans and the run's tiling (``plan`` is a ``TilePlan``)."""
    network = _network(Path(model.folder), model.configuration, plan.num_classes)
    parameters = sum(p.numel() for p in network.parameters())
    patch = tuple(plan.patch_size)
    try:
        features = int(network.compute_conv_feature_map_size(patch))
    except AttributeError:  # architectures without the helper: nnU-Net's rule of thumb, 32 features per voxel
        features = 32 * math.prod(patch) * 4
    cuda = device.startswith("cuda")
    from labpipe.seg.tiles import windows_per_task

    batch = windows_per_task(patch)  # windows that go through the network together
    per_worker = (
        parameters * 4 * len(model.folds)
        + batch * features * (2 if cuda else 4)
        + batch * math.prod(patch) * (1 + 2 * plan.num_classes) * 4
        + (CUDA_CONTEXT_BYTES if cuda else 0)
    )
    padded = math.prod(plan.padded_shape)
    voxels = math.prod(plan.shape_zyx)
    return MemoryEstimate(
        device, workers, int(per_worker), padded * (plan.num_classes + 1) * 2 + voxels, voxels * 3, features, parameters
    )


def available_device_bytes(device: str) -> list[int]:
    """Free bytes per GPU (CUDA), or available host RAM (one entry) on a CPU."""
    if device.startswith("cuda"):
        import torch

        return [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
    import psutil

    return [int(psutil.virtual_memory().available)]


def check_memory(
    estimate: MemoryEstimate,
    *,
    scratch: Path,
    artifacts: Path,
    available: list[int] | None = None,
) -> None:
    """Raise ``OutOfMemory`` naming what is short before the run starts."""
    available = available if available is not None else available_device_bytes(estimate.device)
    if estimate.device.startswith("cuda"):
        per_gpu = math.ceil(estimate.workers / max(len(available), 1))
        need = estimate.per_worker_bytes * per_gpu
        if not available or need > min(available):
            free = min(available) / GiB if available else 0.0
            raise OutOfMemory(
                "GPU memory",
                f"the run needs {need / GiB:.2f} GiB per GPU ({per_gpu} worker(s) x "
                f"{estimate.per_worker_bytes / GiB:.2f} GiB) but the least free GPU has {free:.2f} GiB",
                HINT,
            )
    else:
        need = estimate.per_worker_bytes * estimate.workers
        if need > available[0]:
            raise OutOfMemory(
                "host memory",
                f"the run needs ~{need / GiB:.2f} GiB ({estimate.workers} worker(s)) "
                f"but {available[0] / GiB:.2f} GiB is available",
                HINT,
            )
    for root, need, what in (
        (scratch, estimate.scratch_bytes, "scratch"),
        (artifacts, estimate.artifact_bytes, "artifacts"),
    ):
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
        if need > free:
            raise OutOfMemory(
                root,
                f"the run needs {need / GiB:.2f} GiB in the {what} root, {free / GiB:.2f} GiB is free",
                f"free space there or point the StorageLayout block's {what} elsewhere",
            )
