"""Segmentation lifecycle flows (CryoMamba): nnU-Net v2 segments cryo-ET tomograms tile by tile.

``segment`` (deployment ``segment/tomogram`` on the gpu pool): validate the MRC
-> wait for a ``gpu`` slot (state "Queued") -> windows fanned out over Dask,
logits accumulated, previews as image artifacts (state "Previewing") ->
mask.mrc / mask.nii.gz / mask.nrrd / stats.json in ``artifacts/<run>/``.
Cancelling the run from the UI stops it within seconds and leaves nothing in
that folder (the run ends Cancelled).

``train-seg-model`` (deployment ``train-seg-model/tiny``): an nnU-Net dataset
from labelled tomograms (or simulated ones), nnU-Net's planning and
preprocessing, training (fold all), the model under ``<models>/seg/<name>/``,
also published to the lab's model registry.
"""

from __future__ import annotations

import base64
import contextlib
import re
import threading
import time
from pathlib import Path
from typing import Literal
from uuid import UUID

import httpx
from labpipe.blocks import dask_settings, layout
from labpipe.blocks.registry import model_registry
from labpipe.blocks.seg import segmentation_defaults
from labpipe.compute import DaskSettings, dask_client
from labpipe.errors import ConfigError
from labpipe.flows.common import Progress, gpu_slot, logger, markdown_table, publish_markdown
from labpipe.layout import Layout
from labpipe.seg import shared_models
from labpipe.seg.cluster import window_cluster
from labpipe.seg.mrc import TomogramInfo, validate_tomogram
from labpipe.seg.nnunet import (
    SHORT_TRAINER,
    ModelInfo,
    TrainingCase,
    cases_from_images,
    load_model_info,
    train_model,
)
from labpipe.seg.preview import Preview, preview_png
from labpipe.seg.segment import (
    SegmentationCancelled,
    SegmentationJob,
    SegmentationResult,
    finished_run,
    segment_tomogram,
)
from labpipe.seg.service.errors import ServiceError
from labpipe.seg.service.jobs import RunRef, RunStatus
from labpipe.seg.service.live import LiveFolder
from labpipe.seg.simulate import LABELS, simulate_training_set
from labpipe.seg.tiles import resolve_device
from prefect import flow, get_client, task
from prefect.artifacts import create_image_artifact
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run
from prefect.states import Cancelled, Cancelling, Running


def _artifact_key(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:100] or "segment"


class RunState:
    """Names the flow run's Running state (Queued, Running, Previewing) and notices a cancel request."""

    def __init__(self, poll_every: float = 2.0) -> None:
        self.run_id = self._current()
        self.poll_every, self._last, self._cancelling = poll_every, 0.0, False
        self._lock = threading.Lock()

    @staticmethod
    def _current():
        try:
            return flow_run.id
        except MissingContextError:  # pragma: no cover - outside a run
            return None

    def name(self, name: str) -> None:
        if not self.run_id:
            return
        try:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(self.run_id, Running(name=name), force=True)
        except Exception as exc:  # a state label is cosmetic: never fail the run over it
            logger().debug("could not name the run state %s: %s", name, exc)

    def cancelling(self) -> bool:
        """True once the run was cancelled in the UI/API (polled at most every ``poll_every`` seconds)."""
        if not self.run_id or self._cancelling:
            return self._cancelling
        with self._lock:
            if time.monotonic() - self._last < self.poll_every:
                return False
            self._last = time.monotonic()
            try:
                with get_client(sync_client=True) as client:
                    state = client.read_flow_run(self.run_id).state
                self._cancelling = bool(state and (state.is_cancelling() or state.is_cancelled()))
            except Exception as exc:
                logger().debug("could not read the run state: %s", exc)
        return self._cancelling


@task(name="validate-tomogram", task_run_name="validate-{path.name}")
def validate_task(path: Path, voxel_size: float | None) -> TomogramInfo:
    return validate_tomogram(path, voxel_size=voxel_size, progress=Progress(f"sections of {path.name} read"))


def _publish_preview(run: str, info: TomogramInfo, live: LiveFolder | None):
    key = f"segment-preview-{_artifact_key(run)}"

    def publish(preview: Preview, image) -> None:
        if live is not None:  # first: a service client waits on it; the PNG artifact is for the Prefect UI
            live.publish_preview(preview, info)
        png = base64.b64encode(preview_png(preview, image)).decode()
        with contextlib.suppress(MissingContextError):
            create_image_artifact(
                image_url=f"data:image/png;base64,{png}",
                key=key,
                description=f"{run}: labels every {preview.factor}th voxel (XY | XZ | YZ central slices), "
                f"{preview.tiles_done}/{preview.tiles_total} windows",
            )

    return publish


@task(name="segment-windows", task_run_name="segment-{job.run}")
def segment_task(
    job: SegmentationJob,
    info: TomogramInfo,
    workers: int | None,
    roots: Layout,
    dask: DaskSettings,
    publish_dir: str | None = None,
):
    device = resolve_device(job.device)
    cluster, threads = window_cluster(dask, device, workers)
    state = RunState()
    live = LiveFolder(publish_dir) if publish_dir else None
    artifact = Progress(f"windows of {job.run} predicted", key=f"segment-progress-{_artifact_key(job.run)}")

    def progress(done: int, total: int) -> None:
        if live is not None:
            live.publish_progress(done, total)
        artifact(done, total)

    occupy = cluster.n_workers if device.startswith("cuda") and cluster.n_workers else 1
    state.name("Queued")
    with gpu_slot(occupy):
        state.name("Running")
        with dask_client(cluster) as client:
            return segment_tomogram(
                job,
                roots,
                client=client,
                threads_per_task=threads,
                progress=progress,
                on_preview=_publish_preview(job.run, info, live),
                on_phase=lambda phase: state.name("Previewing") if phase == "previewing" else None,
                should_stop=state.cancelling,
                say=logger().info,
                info=info,
            )


def _summary(result: SegmentationResult, model: ModelInfo) -> str:
    stats = result.stats
    rows = [
        {
            "label": name,
            "value": s["value"],
            "voxels": s["voxels"],
            "fraction": f"{s['fraction']:.4f}",
            "volume nm^3": f"{s['volume_nm3']:.4g}",
            "surface nm^2": "" if s["surface_area_nm2"] is None else f"{s['surface_area_nm2']:.4g}",
        }
        for name, s in stats["labels"].items()
    ]
    lines = [
        f"# Segmentation `{result.run}`" + (" (already done, reused)" if result.skipped else ""),
        f"Tomogram `{stats['tomogram']}`: {stats['shape_zyx']} voxels (ZYX) of "
        f"{stats['voxel_size_zyx_angstrom']} Angstrom; model `{model.name}` ({model.trainer}, "
        f"patch {model.patch_size}).",
        f"{result.tiles} windows, step {stats['step_size']}, mirroring {stats['mirroring']}, "
        f"device {stats.get('device')}, {stats.get('workers')} Dask worker(s); timings {result.seconds}.",
        "",
        markdown_table(rows),
        "## Artifacts",
        *[f"- `{path}`" for path in result.files.values()],
    ]
    return "\n".join(lines)


def _run_name() -> str:
    params = flow_run.parameters
    tomogram = Path(str(params.get("tomogram", "tomogram"))).stem
    return f"segment-{params.get('run') or tomogram}-{params.get('model') or 'default'}"


@flow(name="segment", flow_run_name=_run_name, log_prints=True)
def segment(
    tomogram: str,
    model: str | None = None,
    run: str | None = None,
    step_size: float | None = None,
    mirroring: bool | None = None,
    fp16: bool | None = None,
    workers: int | None = None,
    device: Literal["cpu", "cuda"] | None = None,
    preview_every: float | None = None,
    preview_factor: int | None = None,
    voxel_size: float | None = None,
    layout_block: str | None = "default",
    dask_block: str | None = "default",
    seg_block: str | None = "default",
    publish_dir: str | None = None,
):
    """Segment one tomogram with an nnU-Net model: sliding windows on Dask, previews while it runs, artifacts at once.

    Parameters left empty come from the ``labpipe segmentation`` block. Returns the run's artifact paths and
    label statistics.

    Args:
        tomogram: The MRC file: an absolute path, or a file name under the tomograms root.
        model: Model name in the models root's seg folder (else fetched from the model registry); empty: the block's.
        run: Name of this run's artifact folder (letters, digits, '.', '-', '_'); empty: tomogram name and time.
        step_size: Sliding-window step as a fraction of the patch (0.5 as nnU-Net; larger is faster, coarser).
        mirroring: Test-time mirroring (up to 8 predictions per window: slower, slightly better).
        fp16: Half precision on CUDA as nnU-Net (default); false runs the network in float32 (slower, more
            GPU memory). On a CPU the network always runs in float32.
        workers: Dask workers for the windows; empty: one per GPU, or half the cores on a CPU host.
        device: Where the network runs; empty: CUDA when the host has a GPU (LABPIPE_DEVICE wins).
        preview_every: Fraction of windows between previews (0.1: ten previews); 0 turns previews off.
        preview_factor: Integer downsampling of preview images.
        voxel_size: Voxel size in angstrom when the MRC header lacks one.
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        dask_block: Name of the labpipe dask cluster block (a scheduler address, or a local cluster).
        seg_block: Name of the labpipe segmentation block holding these defaults.
        publish_dir: Folder where the run also publishes its progress, newest preview and result for the
            segmentation service (labpipe seg serve sets it); empty: none.
    """
    parameters = dict(locals())
    live = LiveFolder(publish_dir) if publish_dir else None
    try:
        result = _segment(**parameters)
    except Exception as exc:
        if live is not None:
            live.publish_error(exc)
        raise
    if live is not None and isinstance(result, dict):
        live.publish_result(result)
    return result


# the flow's body (the flow above reports its result or error to the service's live folder)
def _segment(
    tomogram,
    model,
    run,
    step_size,
    mirroring,
    fp16,
    workers,
    device,
    preview_every,
    preview_factor,
    voxel_size,
    layout_block,
    dask_block,
    seg_block,
    publish_dir,
):
    defaults = segmentation_defaults(seg_block)
    roots = layout(layout_block)
    path = Path(tomogram) if Path(tomogram).is_absolute() else Path(roots.tomograms) / tomogram
    job = SegmentationJob(
        tomogram=path,
        model=model or defaults.model,
        run=run,
        step_size=step_size if step_size is not None else defaults.step_size,
        mirroring=mirroring if mirroring is not None else defaults.mirroring,
        fp16=fp16 if fp16 is not None else True,
        device=device or defaults.device,
        preview_every=preview_every if preview_every is not None else defaults.preview_every,
        preview_factor=preview_factor or defaults.preview_factor,
        voxel_size=voxel_size,
    )
    job.run = job.run_name()
    info = validate_task(path, voxel_size)
    model_info = ensure_model(roots, job.model)
    if (done := finished_run(job, roots)) is not None:
        publish_markdown(_summary(done, model_info), key="segment-summary", description="segmentation run summary")
        return {k: v for k, v in done.as_json().items() if k != "memory"}
    try:
        result = segment_task(
            job, info, workers or defaults.workers, roots, dask_settings(dask_block), publish_dir=publish_dir
        )
    except SegmentationCancelled as exc:
        publish_markdown(
            f"# Segmentation `{job.run}`: cancelled\n{exc}",
            key="segment-summary",
            description="segmentation run summary",
        )
        return Cancelled(message=str(exc))
    publish_markdown(_summary(result, model_info), key="segment-summary", description="segmentation run summary")
    return {k: v for k, v in result.as_json().items() if k != "memory"}


# ---------------------------------------------------------------------------------------------- the service


class PrefectJobRunner:
    """The segmentation service's jobs as flow runs of the ``segment`` deployment (``labpipe.seg.service.jobs``).

    A job is submitted with its id as idempotency key: submitting it again (after the service crashed between
    recording the job and learning its run) returns the run already made. Runs are tagged ``seg-service``.
    """

    name = "prefect"

    def __init__(self, deployment: str = "segment/tomogram") -> None:
        self.deployment = deployment

    @staticmethod
    def _unavailable(exc: Exception) -> ServiceError:
        return ServiceError(503, "orchestrator_unavailable", f"the Prefect API did not answer: {type(exc).__name__}",
                            "try again in a minute; tell the admins if it persists", retryable=True)  # fmt: skip

    def submit(self, job_id: str, parameters: dict) -> RunRef:
        from prefect.deployments import run_deployment

        try:
            run = run_deployment(self.deployment, parameters=parameters, timeout=0, tags=["seg-service"],
                                 idempotency_key=f"seg-service-{job_id}")  # fmt: skip
        except (OSError, httpx.HTTPError) as exc:
            raise self._unavailable(exc) from exc
        return RunRef(str(run.id), run.name)

    def status(self, run_id: str) -> RunStatus | None:
        from prefect.exceptions import ObjectNotFound

        try:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(UUID(run_id)).state
        except ObjectNotFound:
            return None
        except (OSError, httpx.HTTPError) as exc:
            raise self._unavailable(exc) from exc
        if state is None:
            return RunStatus("PENDING")
        return RunStatus(state.type.value, state.name, state.message)

    def cancel(self, run_id: str) -> None:
        """Cancelling a run that has not started ends it at once; a running one stops within seconds."""
        try:
            with get_client(sync_client=True) as client:
                state = client.read_flow_run(UUID(run_id)).state
                started = state is not None and state.is_running()
                client.set_flow_run_state(
                    UUID(run_id),
                    Cancelling(message="cancelled through the segmentation service")
                    if started
                    else Cancelled(message="cancelled through the segmentation service before it started"),
                    force=True,
                )
        except (OSError, httpx.HTTPError) as exc:
            raise self._unavailable(exc) from exc


# ---------------------------------------------------------------------------------------------- models


def ensure_model(roots: Layout, name: str) -> ModelInfo:
    """The model from the models root, or fetched from the lab's model registry into it."""
    return shared_models.ensure_model(roots, name, model_registry())


@task(name="simulate-training-set", task_run_name="simulate-{count}-tomograms")
def simulate_training_task(folder: Path, count: int, size: int, seed: int) -> list[tuple[str, str]]:
    return [(str(a), str(b)) for a, b in simulate_training_set(folder, count=count, shape=(size,) * 3, seed=seed)]


@task(name="train-nnunet", task_run_name="train-{name}")
def train_task(name: str, cases: list[tuple[str, str]], label_names: dict, options: dict, roots: Layout) -> dict:
    progress = Progress(f"epochs of {name}")
    with gpu_slot():
        report = train_model(
            [TrainingCase(Path(a), Path(b)) for a, b in cases],
            name=name,
            layout=roots,
            label_names={int(k): v for k, v in label_names.items()},
            progress=progress,
            say=logger().info,
            **options,
        )
    return {
        "model": report.model.as_json(),
        "plan_seconds": report.plan_seconds,
        "train_seconds": report.train_seconds,
        "final_loss": report.final_loss,
    }


@flow(name="train-seg-model", flow_run_name="train-seg-model-{name}", log_prints=True)
def train_seg_model(
    name: str = "tiny",
    images: list[str] | None = None,
    simulate: int = 4,
    size: int = 48,
    network: Literal["tiny", "default"] = "tiny",
    trainer: Literal["nnUNetTrainerLabpipeShort", "nnUNetTrainer"] = SHORT_TRAINER,
    epochs: int = 1,
    iterations: int = 2,
    device: Literal["cpu", "cuda"] | None = None,
    reuse: bool = True,
    overwrite: bool = False,
    publish: bool = True,
    seed: int = 0,
    layout_block: str | None = "default",
) -> dict:
    """Train an nnU-Net v2 model on labelled tomograms or simulated ones, and publish it to the model registry.

    Args:
        name: Model name (a folder in the models root's seg folder, registry alias seg-NAME).
        images: Labelled tomograms: MRC paths, each with STEM_labels.mrc beside it; empty: simulated ones.
        simulate: How many tomograms to simulate when no images are given.
        size: Edge of each simulated tomogram (voxels).
        network: 'tiny' (fast, for tests and demos) or nnU-Net's 'default' network for the plan.
        trainer: nnU-Net trainer class: labpipe's short one (epochs and iterations below) or nnU-Net's own.
        epochs: Training epochs (the short trainer only).
        iterations: Iterations per epoch (the short trainer only).
        device: Where training runs; empty: CUDA when the host has a GPU.
        reuse: Return a model of that name already trained as it is.
        overwrite: Train again over a model of that name.
        publish: Publish the trained model to the lab's model registry.
        seed: Seed of the simulated tomograms.
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
    """
    roots = layout(layout_block)
    if reuse and not overwrite:
        try:
            info = load_model_info(roots, name)
            publish_markdown(
                f"# Model `{name}` reused\n`{info.folder}`", key="train-seg-model", description="segmentation model"
            )
            return {"model": info.as_json(), "reused": True}
        except ConfigError:
            pass
    if images:
        cases, labels = cases_from_images([Path(i) for i in images])
        pairs = [(str(c.image), str(c.labels)) for c in cases]
    else:
        pairs = simulate_training_task(Path(roots.tomograms) / "training" / name, simulate, size, seed)
        labels = LABELS
    device = device or ("cuda" if resolve_device(None).startswith("cuda") else "cpu")
    options = {
        "network": network,
        "trainer": trainer,
        "epochs": epochs,
        "iterations": iterations,
        "device": device,
        "overwrite": overwrite,
    }
    result = train_task(name, pairs, {str(k): v for k, v in labels.items()}, options, roots)
    info = ModelInfo(**result["model"])
    registry_id = shared_models.publish_model(model_registry(), info, result["final_loss"]) if publish else None
    publish_markdown(
        f"# Model `{name}` trained\n{len(pairs)} tomograms, {info.trainer} ({info.network} network), "
        f"patch {info.patch_size}, voxel size {info.voxel_size_zyx} A, on {device}.\n\n"
        f"Planning + preprocessing {result['plan_seconds']:.0f} s, training {result['train_seconds']:.0f} s, "
        f"final loss {result['final_loss']}.\n\nFolder `{info.folder}`; registry id `{registry_id}`.",
        key="train-seg-model",
        description="segmentation model",
    )
    return {**result, "registry_id": registry_id, "reused": False}
