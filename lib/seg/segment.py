"""One segmentation run: validate -> plan windows -> check memory -> tiles over Dask -> labels -> artifacts.

The run's products appear in ``<artifacts>/<run>/`` all at once (staged in a
hidden folder beside it, renamed when complete), so a failed, cancelled or
killed run leaves nothing there. Work in progress (float16 logit sums,
previews) lives in ``<scratch>/seg/<run>-<id>/`` and is removed at the end;
folders of runs whose process died are removed by the next run of that name.
A rerun of a finished run with the same input, model and settings returns
the existing artifacts; with different ones it refuses to overwrite.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from labpipe.errors import ConfigError, ConflictError, LabpipeError, ToolError
from labpipe.files import atomic_path, path_component
from labpipe.layout import Layout
from labpipe.procs import pid_alive
from labpipe.seg.artifacts import MASK_FILES, write_artifacts
from labpipe.seg.memory import MemoryEstimate, check_memory, estimate_memory
from labpipe.seg.mrc import TomogramInfo, open_volume, validate_tomogram
from labpipe.seg.nnunet import ModelInfo, load_model_info
from labpipe.seg.preview import Preview, choose_factor, downsample, write_preview_mrc
from labpipe.seg.tiles import LogitAccumulator, TilePlan, plan_tiles, predict_tiles, resolve_device, windows_per_task


class SegmentationCancelled(LabpipeError):
    """The run was cancelled; nothing was written to its artifact folder."""


@dataclass
class SegmentationJob:
    """What to segment with which model, and how."""

    tomogram: Path
    model: str
    run: str | None = None
    step_size: float = 0.5
    mirroring: bool = True
    fp16: bool = True  # half precision on CUDA (nnU-Net's autocast); False: float32 (on CPU it always is)
    device: str | None = None
    preview_factor: int | None = None
    preview_every: float = 5.0  # seconds; 0 turns previews off
    voxel_size: float | None = None

    def __post_init__(self) -> None:
        # the run names the artifact and scratch folders: refused here, before anything is read or written
        if self.run is not None:
            self.run = path_component(self.run, what="run name")

    def run_name(self) -> str:
        return self.run or default_run_name(Path(self.tomogram), self.model)


@dataclass
class SegmentationResult:
    run: str
    folder: str
    files: dict[str, str]
    stats: dict
    tiles: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: bool = False
    previews: int = 0
    memory: dict | None = None

    def as_json(self) -> dict:
        return asdict(self)


def default_run_name(tomogram: Path, model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{Path(tomogram).stem}-{model}")


def _identity(job: SegmentationJob, model: ModelInfo) -> dict:
    """What makes two runs the same run: the input file as it is now, the model's weights, the settings."""
    stat = Path(job.tomogram).stat()
    return {
        "tomogram": str(Path(job.tomogram).resolve()),
        "tomogram_bytes": stat.st_size,
        "tomogram_mtime_ns": stat.st_mtime_ns,
        "model": model.name,
        "model_checkpoint_sha256": model.checkpoint_sha256,
        "step_size": job.step_size,
        "mirroring": job.mirroring,
        "fp16": job.fp16,
        "voxel_size_override": job.voxel_size,
    }


def _provenance(job: SegmentationJob, model: ModelInfo, plan: TilePlan) -> dict:
    return _identity(job, model) | {"patch_size": list(plan.patch_size), "tiles": len(plan.starts)}


def finished_run(job: SegmentationJob, layout: Layout) -> SegmentationResult | None:
    """The artifacts of this very run if they exist (a rerun is then a no-op); ConflictError if the name is taken."""
    model = load_model_info(layout, job.model)
    return existing_result(Path(layout.artifacts) / job.run_name(), _identity(job, model))


SAME_RUN_KEYS = (
    "tomogram",
    "tomogram_bytes",
    "tomogram_mtime_ns",
    "model_checkpoint_sha256",
    "step_size",
    "mirroring",
    "fp16",
    "voxel_size_override",
)
SAME_RUN_DEFAULTS = {"fp16": True}  # what runs recorded before the key existed used


def existing_result(final: Path, provenance: dict) -> SegmentationResult | None:
    """The finished run in ``final`` if it was made from the same input and settings; ConflictError otherwise."""
    stats_file = final / "stats.json"
    if not final.exists():
        return None
    if not stats_file.is_file():
        raise ConflictError(
            final,
            "an artifact folder without stats.json is in the way",
            "it was not written by labpipe; move it or choose another run name",
        )
    stats = json.loads(stats_file.read_text())
    changed = [k for k in SAME_RUN_KEYS if stats.get(k, SAME_RUN_DEFAULTS.get(k)) != provenance.get(k)]
    if changed:
        raise ConflictError(
            final,
            f"a finished run of this name used different {', '.join(changed)}",
            "choose another run name, or delete the old artifacts if they are no longer wanted",
        )
    return SegmentationResult(
        final.name,
        str(final),
        {n: str(final / n) for n in MASK_FILES},
        stats,
        tiles=stats.get("tiles", 0),
        skipped=True,
    )


def _owners(layout: Layout, run: str) -> list[tuple[Path, dict]]:
    found = []
    for work in (Path(layout.scratch) / "seg").glob(f"{run}-*"):
        with contextlib.suppress(OSError, ValueError):
            found.append((work, json.loads((work / "owner.json").read_text())))
    return found


def clean_stale(layout: Layout, run: str) -> list[Path]:
    """Remove work folders and half-staged artifact folders of ``run`` left by processes that died.

    A process of this host that no longer exists is dead; work of other hosts
    (a shared scratch root) is left alone unless a day old.
    """
    host, removed, live = socket.gethostname(), [], False
    for work, owner in _owners(layout, run):
        dead = owner.get("host") == host and not pid_alive(int(owner.get("pid", 0)))
        if dead or time.time() - work.stat().st_mtime > 86400:
            shutil.rmtree(work, ignore_errors=True)
            removed.append(work)
        else:
            live = True
    # atomic_path stages as ".<name>.<random>.part" beside the final folder, while the run's work folder exists
    for staged in Path(layout.artifacts).glob(f".{run}.*.part"):
        if not live or time.time() - staged.stat().st_mtime > 86400:
            shutil.rmtree(staged, ignore_errors=True)
            removed.append(staged)
    return removed


def _labels_of(model: ModelInfo) -> dict[int, str]:
    return {int(v): name for name, v in model.labels.items()}


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._t = time.monotonic()

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._t, 3)
        self._t = now


def segment_tomogram(
    job: SegmentationJob,
    layout: Layout,
    *,
    client=None,
    threads_per_task: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_preview: Callable[[Preview, np.ndarray], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    available_memory: list[int] | None = None,
    say: Callable[[str], None] = lambda text: None,
    info: TomogramInfo | None = None,
) -> SegmentationResult:
    """Segment one tomogram; the windows run on ``client`` (a ``distributed.Client``) or in this process.

    ``should_stop`` is polled about twice a second: when it returns true the
    queued windows are cancelled and ``SegmentationCancelled`` is raised.
    ``on_preview(preview, tomogram_downsampled)`` is called every
    ``job.preview_every`` seconds while windows complete. ``info``: the
    tomogram's ``validate_tomogram`` result, if the caller has it.
    """
    phase = on_phase or (lambda name: None)
    stop = should_stop or (lambda: False)
    clock = _Clock()
    run = job.run_name()
    tomogram = Path(job.tomogram)
    phase("validating")
    # one full read of the file: validation also measures what the tiling needs (pass ``info`` if done already)
    info = info or validate_tomogram(tomogram, voxel_size=job.voxel_size)
    model = load_model_info(layout, job.model)
    plan = plan_tiles(tomogram, info, model, step_size=job.step_size, mirroring=job.mirroring, fp16=job.fp16)
    provenance = _provenance(job, model, plan)
    final = Path(layout.artifacts) / run
    clean_stale(layout, run)
    if (done := existing_result(final, provenance)) is not None:
        say(f"{final} already holds this run; nothing to do")
        return done
    device = resolve_device(job.device)
    workers = _worker_count(client)
    estimate = estimate_memory(plan, model, device, workers)
    check_memory(estimate, scratch=Path(layout.scratch), artifacts=Path(layout.artifacts), available=available_memory)
    say(
        f"{tomogram.name}: {info.shape_zyx} voxels, {len(plan.starts)} windows of {plan.patch_size} on {device} "
        f"x{workers}; memory {estimate.describe()}"
    )
    clock.lap("validate")
    work = Path(layout.scratch) / "seg" / f"{run}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    (work / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "run": run}))
    try:
        phase("running")
        accumulator = LogitAccumulator(work, plan)
        previews = _Previewer(job, info, plan, accumulator, work, on_preview, phase)
        _predict_all(plan, accumulator, client, device, threads_per_task, progress, previews, stop, run)
        clock.lap("predict")
        phase("writing")
        labels = np.lib.format.open_memmap(work / "labels.npy", "w+", np.uint8, info.shape_zyx)
        accumulator.write_labels(labels)
        labels.flush()
        provenance |= {
            "run": run,
            "device": device,
            "workers": workers,
            "memory_estimate": estimate.as_json(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        with atomic_path(final) as staged:
            staged.mkdir()
            stats = write_artifacts(staged, labels, info, _labels_of(model), provenance)
            if stop():
                raise SegmentationCancelled(run, "cancelled while writing artifacts", "nothing was published")
        clock.lap("write")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return SegmentationResult(
        run,
        str(final),
        {n: str(final / n) for n in MASK_FILES},
        stats,
        len(plan.starts),
        clock.seconds,
        previews=previews.count,
        memory=estimate.as_json(),
    )


def _worker_count(client) -> int:
    if client is None:
        return 1
    return max(1, len(client.scheduler_info().get("workers", {})))


class _Previewer:
    """Every ``preview_every`` seconds: labels every f-th voxel -> latest preview MRC -> callback."""

    def __init__(self, job, info, plan, accumulator, work: Path, callback, phase) -> None:
        self.every, self.callback, self.phase = job.preview_every, callback, phase
        self.info, self.plan, self.accumulator = info, plan, accumulator
        self.factor = choose_factor(info.shape_zyx, job.preview_factor)
        self.path = work / f"preview_x{self.factor}.mrc"
        self.count, self._done = 0, -1
        self._last = time.monotonic()
        self._image: np.ndarray | None = None

    def maybe(self, done: int, total: int) -> None:
        if self.every <= 0 or done >= total or done == self._done or time.monotonic() - self._last < self.every:
            return
        self.publish(done, total)

    def publish(self, done: int, total: int) -> Preview:
        if self._image is None:
            with open_volume(Path(self.info.path)) as data:
                self._image = downsample(data, self.factor)
        labels, pending = self.accumulator.labels_at(self.factor)
        preview = Preview(self.factor, labels, pending, done, total, self.path)
        self._done = done
        write_preview_mrc(self.path, preview, self.info)
        if self.count == 0:
            self.phase("previewing")
        self.count += 1
        if self.callback:
            self.callback(preview, self._image)
        self._last = time.monotonic()
        return preview


def _batches(plan, workers: int = 1) -> list[tuple[int, list]]:
    """The windows in nnU-Net's order, cut into batches: (index of the first window, its starts).

    At least four batches per worker, so that small volumes still spread over the workers and
    show progress and previews while they run.
    """
    size = min(windows_per_task(tuple(plan.patch_size)), math.ceil(len(plan.starts) / (4 * max(1, workers))))
    size = max(1, size)
    return [(first, list(plan.starts[first : first + size])) for first in range(0, len(plan.starts), size)]


def _cancelled(run: str, added: int, total: int) -> SegmentationCancelled:
    return SegmentationCancelled(
        run, f"cancelled after {added} of {total} windows", "nothing was written to the artifact folder"
    )


def _predict_all(plan, accumulator, client, device, threads, progress, previews, stop, run) -> None:
    total = len(plan.starts)
    if client is None:
        for first, starts in _batches(plan):
            if stop():
                raise _cancelled(run, accumulator.added, total)
            for offset, logits in enumerate(predict_tiles(plan, starts, device, threads)):
                accumulator.offer(first + offset, logits)
            if progress:
                progress(accumulator.added, total)
            previews.maybe(accumulator.added, total)
        return
    _predict_on_dask(plan, accumulator, client, device, threads, progress, previews, stop, run)


def _predict_on_dask(plan, accumulator, client, device, threads, progress, previews, stop, run) -> None:
    from distributed import wait
    from distributed.scheduler import KilledWorker

    total = len(plan.starts)
    workers = client.scheduler_info().get("workers", {})
    resources = None
    if device and device.startswith("cuda"):
        if not any(w.get("resources", {}).get("GPU") for w in workers.values()):
            raise ConfigError(
                "Dask cluster",
                "no worker advertises a GPU resource",
                "give GPU workers resources={'GPU': 1} (DaskCluster block gpu_resources=1)",
            )
        resources = {"GPU": 1}
    # the plan travels with each task (~1 KB without the window list): data scattered to a worker dies with it
    task_plan = dataclasses.replace(plan, starts=())
    batches = _batches(plan, len(workers))
    # two batches per worker in flight: one computing, one queued behind it; few to cancel, little to buffer
    window = 2 * max(1, len(workers))
    inflight: dict = {}
    submitted = 0
    tag = uuid.uuid4().hex[:6]
    try:
        while accumulator.added < total:
            while submitted < len(batches) and len(inflight) < window:
                first, starts = batches[submitted]
                future = client.submit(
                    predict_tiles,
                    task_plan,
                    starts,
                    device,
                    threads,
                    key=f"seg-{run}-{tag}-{first}",
                    resources=resources,
                    pure=False,
                )
                inflight[future] = first
                submitted += 1
            with contextlib.suppress(TimeoutError):
                wait(list(inflight), timeout=0.5, return_when="FIRST_COMPLETED")
            for future in [f for f in inflight if f.done()]:
                first = inflight.pop(future)
                try:
                    result = future.result()
                except KilledWorker as exc:
                    raise ToolError(
                        "Dask worker",
                        f"workers kept dying predicting windows from {first} {plan.starts[first]} ({exc})",
                        "a worker process was killed (host out of memory?); see the Dask worker logs, "
                        "then run again with fewer workers",
                    ) from None
                for offset, logits in enumerate(result):
                    accumulator.offer(first + offset, logits)
                future.release()
            if progress:
                progress(accumulator.added, total)
            if stop():
                raise _cancelled(run, accumulator.added, total)
            previews.maybe(accumulator.added, total)
    finally:
        if inflight:
            client.cancel(list(inflight), force=True)


def estimate_only(job: SegmentationJob, layout: Layout, workers: int = 1) -> MemoryEstimate:
    """The memory estimate of a run without running it (``labpipe seg run --dry-run``)."""
    info = validate_tomogram(Path(job.tomogram), voxel_size=job.voxel_size)
    model = load_model_info(layout, job.model)
    plan = plan_tiles(Path(job.tomogram), info, model, step_size=job.step_size, mirroring=job.mirroring, fp16=job.fp16)
    return estimate_memory(plan, model, resolve_device(job.device), workers)
