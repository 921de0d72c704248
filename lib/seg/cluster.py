"""The Dask cluster a segmentation's sliding windows run on, sized to the device."""

from __future__ import annotations

import os

from labpipe.compute import DaskSettings


def window_cluster(settings: DaskSettings, device: str, workers: int | None) -> tuple[DaskSettings, int | None]:
    """Dask settings for the windows, and the torch threads per worker (None: leave torch's choice).

    A configured scheduler (``settings.address``) is used as it is; SLURM jobs too, torch's threads being the
    cores each worker process of a job holds. Otherwise a local cluster: one worker per
    GPU (resource ``GPU=1``) for a CUDA device, or CPU workers (``workers``, default half the cores) sharing
    the cores between them.
    """
    if settings.address:
        return settings, None
    if settings.slurm:
        return settings, max(1, settings.slurm.cores // settings.slurm.processes)
    cores = os.cpu_count() or 1
    if device.startswith("cuda"):
        import torch

        gpus = max(1, torch.cuda.device_count())
        count = min(workers or gpus, gpus)
        return settings.model_copy(update={"n_workers": count, "gpu_resources": 1, "threads_per_worker": 1}), None
    count = workers or max(1, cores // 2)
    return settings.model_copy(update={"n_workers": count, "threads_per_worker": 1}), max(1, cores // count)
