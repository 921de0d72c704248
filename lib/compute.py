"""Dask inside a flow: a LocalCluster sized to the machine, a scheduler from configuration, or workers started as
SLURM jobs.

A step that fans out (subbands, tiles, neurons) gets a ``distributed.Client``
from ``dask_client(settings)``; on the lab's cluster GPU workers advertise
``resources={"GPU": 1}`` and GPU tasks ask for it. On a facility's SLURM cluster
(``settings.slurm``) the step's own scheduler runs in the flow's process and its
workers arrive as SLURM jobs (``dask_jobqueue.SLURMCluster``, the ``slurm`` extra).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

from labpipe.errors import ConfigError, ToolError
from pydantic import BaseModel, Field


class SlurmSettings(BaseModel):
    """Dask workers as SLURM jobs: what each job asks for and how many run (``dask_jobqueue.SLURMCluster``)."""

    queue: str | None = Field(None, description="SLURM partition the jobs go to (sbatch -p); empty: its default.")
    account: str | None = Field(None, description="SLURM account charged (sbatch -A); empty: the user's default.")
    cores: int = Field(1, ge=1, description="CPU cores per job (sbatch --cpus-per-task).")
    memory: str = Field("2GiB", description="Memory per job, e.g. '4GiB' (sbatch --mem, and the workers' limit).")
    processes: int = Field(1, ge=1, description="Dask worker processes per job (they share its cores).")
    walltime: str = Field("01:00:00", description="Wall time per job, HH:MM:SS (sbatch -t).")
    job_extra: list[str] = Field(
        default_factory=list, description="More #SBATCH directives, e.g. ['--qos=normal', '--gres=gpu:1']."
    )
    jobs: int = Field(1, ge=1, description="Jobs started for each step (fixed size); with adaptive_max, the least.")
    adaptive_max: int | None = Field(
        None, ge=1, description="Adapt between `jobs` and this many jobs to the work queued; empty: fixed size."
    )
    arrival_timeout_s: float = Field(
        600.0, gt=0, description="Seconds the step waits for its first worker to start (a busy queue) before failing."
    )
    scheduler_host: str | None = Field(
        None, description="Address of this host the workers reach its scheduler on; empty: the host's address."
    )
    python: str | None = Field(None, description="The workers' Python (same labpipe install); empty: this one.")
    log_directory: str | None = Field(None, description="Folder of the jobs' output files (shared); empty: none.")
    local_directory: str | None = Field(None, description="Workers' spill folder on the node; empty: Dask's default.")


class DaskSettings(BaseModel):
    """Where a flow's Dask work runs."""

    address: str | None = Field(None, description="tcp://host:8786 of a running scheduler; empty: a LocalCluster.")
    n_workers: int | None = Field(None, description="LocalCluster workers; empty: one per core.")
    threads_per_worker: int = Field(1, description="Threads per LocalCluster worker.")
    memory_limit: str = Field("auto", description="Memory limit per LocalCluster worker, e.g. '4GiB'.")
    gpu_resources: int = Field(0, description="GPU resources each LocalCluster worker advertises (0 on CPU hosts).")
    slurm: SlurmSettings | None = Field(
        None, description="Start the workers as SLURM jobs (dask-jobqueue) instead; empty: no SLURM."
    )


@contextlib.contextmanager
def dask_client(settings: DaskSettings | None = None, **overrides) -> Iterator:
    """A ``distributed.Client`` for the duration of the block (a LocalCluster is closed afterwards)."""
    from distributed import Client, LocalCluster

    settings = (settings or DaskSettings()).model_copy(update=overrides)
    if settings.address and settings.slurm:
        raise ConfigError(
            "DaskSettings.slurm", "is set together with `address`", "a scheduler address or SLURM jobs, not both"
        )
    if settings.address:
        with Client(settings.address) as client:
            yield client
        return
    if settings.slurm:
        with slurm_cluster(settings.slurm, settings.gpu_resources) as cluster, Client(cluster) as client:
            wait_for_jobs(client, settings.slurm)
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


def slurm_partitions(sinfo: str = "sinfo") -> list[str]:
    """The partitions SLURM knows (``sinfo``), or ToolError when the cluster does not answer."""
    try:
        result = subprocess.run([sinfo, "-h", "-o", "%R"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise ToolError("sinfo", "SLURM's controller did not answer within 60 s", "is slurmctld up?") from exc
    if result.returncode != 0:
        raise ToolError("sinfo", f"failed: {result.stderr.strip()[-500:]}", "is slurmctld up? is munged running?")
    return sorted({line.strip() for line in result.stdout.splitlines() if line.strip()})


def check_slurm(slurm: SlurmSettings) -> None:
    """ConfigError naming the setting when this host cannot start the jobs ``slurm`` describes."""
    for tool in ("sbatch", "squeue", "scancel", "sinfo"):
        if shutil.which(tool) is None:
            raise ConfigError(
                "DaskSettings.slurm",
                f"{tool} is not on PATH: this host cannot submit SLURM jobs",
                "run the flow on a SLURM submit host (apt-get install slurm-client munge, the cluster's slurm.conf "
                "and munge key), or clear `slurm` in the dask block",
            )
    if slurm.queue is not None:
        known = slurm_partitions()
        if slurm.queue not in known:
            raise ConfigError(
                "DaskSettings.slurm.queue",
                f"SLURM has no partition {slurm.queue!r}",
                f"one of {', '.join(known) or 'none'} (sinfo -s), or empty for the default partition",
            )


@contextlib.contextmanager
def slurm_cluster(slurm: SlurmSettings, gpu_resources: int = 0) -> Iterator:
    """A ``dask_jobqueue.SLURMCluster`` started at the size ``slurm`` asks for; its jobs are cancelled on exit."""
    import dask
    from labpipe.optional import require

    check_slurm(slurm)
    jobqueue = require("dask_jobqueue", "slurm", "Dask workers as SLURM jobs")
    scheduler = {"dashboard": False}  # no web server: diagnostics through the client
    if slurm.scheduler_host:
        scheduler["host"] = slurm.scheduler_host
    worker_args = ["--resources", f"GPU={gpu_resources}"] if gpu_resources else []
    security = None
    if dask.config.get("distributed.comm.require-encryption", False):  # the lab's mutual TLS: the host's files
        from distributed.security import Security

        security = Security()
    cluster = jobqueue.SLURMCluster(
        queue=slurm.queue,
        account=slurm.account,
        cores=slurm.cores,
        memory=slurm.memory,
        processes=slurm.processes,
        walltime=slurm.walltime,
        job_extra_directives=list(slurm.job_extra),
        worker_extra_args=worker_args,
        python=slurm.python or sys.executable,
        log_directory=slurm.log_directory,
        local_directory=slurm.local_directory,
        job_name="labpipe-dask",
        scheduler_options=scheduler,
        security=security,
    )
    with cluster:
        if slurm.adaptive_max:
            cluster.adapt(minimum_jobs=slurm.jobs, maximum_jobs=slurm.adaptive_max)
        else:
            cluster.scale(jobs=slurm.jobs)
        yield cluster


def wait_for_jobs(client, slurm: SlurmSettings) -> float:
    """Seconds until the first SLURM worker joined; ToolError after ``arrival_timeout_s`` (jobs still queued)."""
    started = time.monotonic()
    try:
        client.wait_for_workers(1, timeout=slurm.arrival_timeout_s)
    except TimeoutError as exc:
        raise ToolError(
            "DaskSettings.slurm",
            f"no Dask worker started as a SLURM job within {slurm.arrival_timeout_s:.0f} s",
            "squeue -u $USER shows why the jobs wait (Reason); raise arrival_timeout_s or ask for less",
        ) from exc
    return round(time.monotonic() - started, 2)
