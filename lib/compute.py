"""Dask inside a flow: a LocalCluster sized to the machine, or a scheduler from configuration.

A step that fans out (subbands, tiles, neurons) gets a ``distributed.Client``
from ``dask_client(settings)``; on the lab's cluster GPU workers advertise
``resources={"GPU": 1}`` and GPU tasks ask for it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from pydantic import BaseModel, Field


class DaskSettings(BaseModel):
    """Where a flow's Dask work runs."""

    address: str | None = Field(None, description="tcp://host:8786 of a running scheduler; empty: a LocalCluster.")
    n_workers: int | None = Field(None, description="LocalCluster workers; empty: one per core.")
    threads_per_worker: int = Field(1, description="Threads per LocalCluster worker.")
    memory_limit: str = Field("auto", description="Memory limit per LocalCluster worker, e.g. '4GiB'.")
    gpu_resources: int = Field(0, description="GPU resources each LocalCluster worker advertises (0 on CPU hosts).")


@contextlib.contextmanager
def dask_client(settings: DaskSettings | None = None, **overrides) -> Iterator:
    """A ``distributed.Client`` for the duration of the block (a LocalCluster is closed afterwards)."""
    from distributed import Client, LocalCluster

    settings = (settings or DaskSettings()).model_copy(update=overrides)
    if settings.address:
        with Client(settings.address) as client:
            yield client
        return
    resources = {"GPU": settings.gpu_resources} if settings.gpu_resources else None
    with (
        LocalCluster(
            n_workers=settings.n_workers or os.cpu_count() or 1,
            threads_per_worker=settings.threads_per_worker,
            memory_limit=settings.memory_limit,
            resources=resources,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
