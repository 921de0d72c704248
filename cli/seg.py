"""``labpipe seg``: validate and simulate tomograms, train nnU-Net models, segment one tomogram by hand."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import typer
from labpipe.cli.common import fail, progress_bar

NAME = "seg"
app = typer.Typer(help="The cryo-ET segmentation lifecycle (nnU-Net v2, CryoMamba).", no_args_is_help=True)


def _layout():
    from labpipe.blocks import layout

    return layout().ensure()


@app.command()
def validate(
    file: Path = typer.Argument(..., help="An MRC tomogram."),
    voxel_size: float = typer.Option(None, help="Voxel size in Angstrom, if the header has none."),
) -> None:
    """Check FILE (header, size, finite values; memory-mapped) and print its metadata as JSON; exit 2 if bad."""
    from labpipe.errors import LabpipeError
    from labpipe.seg.mrc import validate_tomogram

    progress, update = progress_bar(f"reading {file.name}")
    try:
        with progress:
            info = validate_tomogram(file, voxel_size=voxel_size, progress=update)
    except LabpipeError as exc:
        fail(exc)
    typer.echo(json.dumps(info.as_json(), indent=1))


@app.command()
def simulate(
    out: Path = typer.Argument(..., help="The tomogram to write (.mrc); labels go to <stem>_labels.mrc/.json."),
    shape: tuple[int, int, int] = typer.Option((64, 128, 128), help="Z Y X voxels."),
    voxel_size: float = typer.Option(20.0, help="Angstrom per voxel."),
    vesicles: int = typer.Option(2),
    particles: int = typer.Option(8),
    snr: float = typer.Option(2.0, help="Signal-to-noise ratio (variance)."),
    origin: tuple[float, float, float] = typer.Option((0.0, 0.0, 0.0), help="MRC origin X Y Z in Angstrom."),
    seed: int = typer.Option(0),
) -> None:
    """Write a synthetic tomogram (membranes, particles, missing wedge, noise) and its true labels."""
    from labpipe.seg.simulate import as_json, simulate_tomogram, write_simulated

    sim = simulate_tomogram(shape, voxel_size=voxel_size, vesicles=vesicles, particles=particles, snr=snr, seed=seed)
    image, labels = write_simulated(out, sim, origin_xyz=origin)
    summary = as_json(sim)
    typer.echo(f"{image} ({summary['shape_zyx']} voxels of {voxel_size} A), labels {labels}: {summary['label_voxels']}")


def _label_names(text: str | None) -> dict[int, str] | None:
    if not text:
        return None
    try:
        return {int(k): v for k, v in (item.split("=", 1) for item in text.split(","))}
    except ValueError:
        typer.echo(f"error: --labels {text!r}: expected 0=background,1=membrane,...", err=True)
        raise typer.Exit(2) from None


@app.command()
def train(
    name: str = typer.Option(..., "--name", help="Model name (stored under <models>/seg/NAME)."),
    images: list[Path] = typer.Argument(None, help="Labelled tomograms (each with <stem>_labels.mrc)."),
    simulate: int = typer.Option(0, help="Train on this many simulated tomograms instead of IMAGES."),
    size: int = typer.Option(48, help="Edge of the simulated tomograms (voxels)."),
    labels: str = typer.Option(None, help="Label names, e.g. 0=background,1=membrane (default: <stem>_labels.json)."),
    network: str = typer.Option("tiny", help="tiny (seconds on a CPU) or default (nnU-Net's own plans)."),
    trainer: str = typer.Option("nnUNetTrainerLabpipeShort", help="nnU-Net trainer; nnUNetTrainer for real models."),
    epochs: int = typer.Option(1, help="Epochs of the short trainer."),
    iterations: int = typer.Option(2, help="Iterations per epoch of the short trainer."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when torch sees a GPU)."),
    overwrite: bool = typer.Option(False, help="Replace a model of the same name."),
    publish: bool = typer.Option(True, help="Also publish to the lab's model registry."),
) -> None:
    """Prepare an nnU-Net dataset, run nnU-Net's planning/preprocessing and training (fold all), store the model."""
    from labpipe.errors import LabpipeError
    from labpipe.seg.nnunet import TrainingCase, cases_from_images, train_model
    from labpipe.seg.simulate import LABELS, simulate_training_set
    from labpipe.seg.tiles import resolve_device

    roots = _layout()
    try:
        if simulate:
            pairs = simulate_training_set(roots.tomograms / "training" / name, count=simulate, shape=(size,) * 3)
            cases, names = [TrainingCase(a, b) for a, b in pairs], LABELS
        elif images:
            cases, names = cases_from_images(images, _label_names(labels))
        else:
            typer.echo("error: give labelled tomograms or --simulate N", err=True)
            raise typer.Exit(2)
        progress, update = progress_bar("epochs")
        with progress:
            report = train_model(
                cases,
                name=name,
                layout=roots,
                label_names=names,
                network=network,
                trainer=trainer,
                epochs=epochs,
                iterations=iterations,
                device=device or resolve_device(None).split(":")[0],
                overwrite=overwrite,
                progress=update,
                say=typer.echo,
            )
    except LabpipeError as exc:
        fail(exc)
    registry_id = None
    if publish:
        from labpipe.blocks.registry import model_registry
        from labpipe.seg.shared_models import publish_model

        registry_id = publish_model(model_registry(), report.model, report.final_loss)
    typer.echo(
        f"model {name} in {report.model.folder} (plan+preprocess {report.plan_seconds:.0f} s, "
        f"train {report.train_seconds:.0f} s, final loss {report.final_loss}); registry id {registry_id}"
    )


@app.command()
def models() -> None:
    """Models under <models>/seg/."""
    from labpipe.seg.nnunet import list_models

    for m in list_models(_layout()):
        typer.echo(
            f"{m.name:<20} {m.trainer} {m.network} patch {m.patch_size} voxel {m.voxel_size_zyx} A "
            f"labels {list(m.labels)} trained {m.trained_at}"
        )


@app.command()
def submit(
    file: Path = typer.Argument(None, help="The MRC tomogram to upload and segment (or --server-path)."),
    server: str = typer.Option(
        ..., "--server", envvar="LABPIPE_SEG_SERVER", help="The service, e.g. https://seg.lab:8443."
    ),
    token_file: Path = typer.Option(None, help="A file holding your token (default: $LABPIPE_SEG_TOKEN)."),
    server_path: str = typer.Option(None, help="Segment a tomogram already on the server instead of uploading FILE."),
    model: str = typer.Option(None, help="Model name (default: the server's; /v1/server/info lists them)."),
    step_size: float = typer.Option(None, help="Window step as a fraction of the patch (server default 0.5)."),
    mirroring: bool = typer.Option(None, "--mirroring/--no-mirroring", help="Test-time mirroring (default on)."),
    fp16: bool = typer.Option(None, "--fp16/--no-fp16", help="Half precision on CUDA (default on)."),
    preview_factor: int = typer.Option(None, help="Preview every N-th voxel (default 4, or 8 for big volumes)."),
    part_mb: int = typer.Option(16, help="Upload part size in MB (8-32)."),
    out: Path = typer.Option(None, help="Folder for the artifacts (default: ./<job id>); with --no-wait: none."),
    wait: bool = typer.Option(True, help="Wait for the job and download its artifacts."),
    cacert: Path = typer.Option(None, help="CA certificate of the server (a lab's own CA)."),
    as_json: bool = typer.Option(False, "--json", help="Print the upload, job and artifacts as JSON."),
) -> None:
    """Upload FILE to a segmentation service (resuming an earlier upload), run a job, fetch its mask.

    Exit 1 when the job fails or is canceled. The token comes from --token-file or $LABPIPE_SEG_TOKEN.
    """
    from labpipe.cli.common import EXIT_FAILED, echo_json
    from labpipe.seg.client import JobOptions, SegmentationClient, file_digests, read_token

    if (file is None) == (server_path is None):
        typer.echo("error: give FILE or --server-path (one of them)", err=True)
        raise typer.Exit(2)
    options = JobOptions(model, step_size, mirroring, fp16, preview_factor)
    report: dict = {}
    with SegmentationClient(server, read_token(token_file), verify=str(cacert) if cacert else True) as client:
        if file is not None:
            progress, update = progress_bar(f"fingerprint {file.name}", unit="bytes")
            with progress:
                file_digests(file, part_mb << 20, update)  # remembered: the upload does not read it again
            progress, update = progress_bar(f"upload {file.name}", unit="bytes")
            with progress:
                upload = client.upload(file, part_bytes=part_mb << 20, progress=update)
            report["upload"] = {k: v for k, v in vars(upload).items() if k != "metadata"}
            if not as_json:
                typer.echo(
                    f"uploaded {file.name}: {upload.parts} parts, {upload.held_at_start} already on the server, "
                    f"{upload.sent_bytes} bytes sent; file {upload.file_id}",
                    err=True,
                )
        job = client.submit(options, file_id=report["upload"]["file_id"] if file else None, server_path=server_path)
        if not as_json:
            typer.echo(f"job {job.id}: {job.state}", err=True)
        if wait:
            progress, update = progress_bar(f"job {job.id[:8]} windows")
            with progress:
                job = client.wait(job.id, progress=lambda j: update(j.done, j.total))
            if job.state == "completed":
                paths = client.download_artifacts(job, out or Path(job.id), names=tuple(job.artifacts))
                report["artifacts"] = {name: str(path) for name, path in paths.items()}
        report["job"] = job.raw
    if as_json:
        echo_json(report)
    else:
        error = job.error or {}
        typer.echo(f"job {job.id}: {job.state} {error.get('message', '')}".rstrip())
        for name, path in report.get("artifacts", {}).items():
            typer.echo(f"  {name}: {path}")
    if wait and job.state != "completed":
        raise typer.Exit(EXIT_FAILED)


def _server_up() -> bool:
    from labpipe.config import get_settings
    from labpipe.deployments.platform import api_healthy

    return api_healthy(get_settings().api_url)


@app.command()
def run(
    file: Path = typer.Argument(..., help="The MRC tomogram to segment."),
    model: str = typer.Option(..., "--model", help="Model name under <models>/seg/."),
    run_name: str = typer.Option(None, "--run", help="Artifact folder name (default: <stem>-<model>)."),
    workers: int = typer.Option(None, help="Dask workers (default: one per GPU, or cores/2 on a CPU)."),
    step_size: float = typer.Option(0.5, help="Window step as a fraction of the patch."),
    mirroring: bool = typer.Option(True, help="Test-time mirroring, as nnU-Net."),
    device: str = typer.Option(None, help="cpu, cuda or cuda:N."),
    voxel_size: float = typer.Option(None, help="Voxel size in Angstrom, if the header has none."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only validate and print the memory estimate."),
    submit: bool = typer.Option(False, help="Run through the segment/tomogram deployment on the gpu pool instead."),
) -> None:
    """Segment FILE here, with a progress bar; artifacts land in <artifacts>/<run>/."""
    from labpipe.blocks import dask_settings
    from labpipe.compute import dask_client
    from labpipe.errors import LabpipeError
    from labpipe.flows.common import gpu_slot
    from labpipe.seg.cluster import window_cluster
    from labpipe.seg.segment import SegmentationCancelled, SegmentationJob, estimate_only, segment_tomogram
    from labpipe.seg.tiles import resolve_device

    job = SegmentationJob(
        file.resolve(),
        model,
        run=run_name,
        step_size=step_size,
        mirroring=mirroring,
        device=device,
        voxel_size=voxel_size,
        preview_every=0,
    )
    if submit:
        from prefect.deployments import run_deployment

        params = {
            "tomogram": str(file.resolve()),
            "model": model,
            "run": run_name,
            "workers": workers,
            "step_size": step_size,
            "mirroring": mirroring,
            "device": device,
            "voxel_size": voxel_size,
        }
        flow_run = run_deployment("segment/tomogram", parameters=params, timeout=0)
        typer.echo(f"submitted {flow_run.name} ({flow_run.id}); follow it in the Prefect UI")
        return
    roots = _layout()
    try:
        resolved = resolve_device(device)
        cluster, threads = window_cluster(dask_settings(None), resolved, workers)
        if dry_run:
            estimate = estimate_only(job, roots, cluster.n_workers or 1)
            typer.echo(json.dumps(estimate.as_json(), indent=1))
            return
        # one job per GPU: take a slot of the platform's gpu limit when its server runs
        slot = gpu_slot(cluster.n_workers if resolved.startswith("cuda") else 1) if _server_up() else None
        if slot is None:
            typer.echo("note: no Prefect server answers, so the gpu concurrency limit is not applied", err=True)
        progress, update = progress_bar(f"windows of {file.name}")
        with slot or contextlib.nullcontext(), dask_client(cluster) as client, progress:
            result = segment_tomogram(
                job,
                roots,
                client=client,
                threads_per_task=threads,
                progress=update,
                say=lambda text: progress.console.print(text),
            )
    except SegmentationCancelled as exc:
        fail(exc)
    except LabpipeError as exc:
        fail(exc)
    except KeyboardInterrupt:
        typer.echo("interrupted: nothing was written to the artifact folder", err=True)
        raise typer.Exit(130) from None
    typer.echo(json.dumps({k: v for k, v in result.as_json().items() if k not in ("memory",)}, indent=1))


# ---------------------------------------------------------------------------------------------- the service

KEY_FILE_ENV = "LABPIPE_SEG_KEY_FILE"


def _key_file(given: Path | None) -> Path:
    import os

    from labpipe.config import get_settings

    return Path(given or os.environ.get(KEY_FILE_ENV) or get_settings().home / "seg" / "service.key")


@app.command()
def token(
    user: str = typer.Option(..., "--user", help="Whose token (letters, digits, '.', '_', '@', '-')."),
    scopes: str = typer.Option("read,submit", help="Comma-separated: read, submit, admin."),
    ttl: str = typer.Option("8h", help="Lifetime: 90s, 30m, 8h, 7d."),
    path: list[Path] = typer.Option(None, "--path", help="A server folder whose tomograms the token may segment."),
    key_file: Path = typer.Option(
        None, help=f"Signing key, mode 0600 (default: ${KEY_FILE_ENV}, else HOME/seg/service.key)."
    ),
) -> None:
    """Print a bearer token for the segmentation service (signed with the service's key; made 0600 if missing)."""
    from labpipe.errors import LabpipeError
    from labpipe.seg.service.auth import Keys, mint_token, parse_ttl

    try:
        keys = Keys.from_file(_key_file(key_file))
        text = mint_token(
            keys,
            user,
            [s.strip() for s in scopes.split(",") if s.strip()],
            parse_ttl(ttl),
            paths=[str(p) for p in path or []],
        )
    except LabpipeError as exc:
        fail(exc)
    typer.echo(text)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to bind (another than loopback needs --certfile/--keyfile)."),
    port: int = typer.Option(8791, help="Port."),
    data: Path = typer.Option(
        None, help="Uploads, files and jobs (default HOME/seg/service); gpu workers must see it."
    ),
    key_file: Path = typer.Option(
        None, help=f"Signing key, mode 0600 (default: ${KEY_FILE_ENV}, else HOME/seg/service.key)."
    ),
    certfile: Path = typer.Option(None, help="TLS certificate (PEM, with its chain): serve HTTPS."),
    keyfile: Path = typer.Option(None, help="TLS private key (PEM, mode 600)."),
    deployment: str = typer.Option("segment/tomogram", help="The deployment a job runs (on the gpu pool)."),
    upload_max_age: str = typer.Option("24h", help="Remove uploads untouched this long (90s, 30m, 8h, 7d)."),
    file_max_age: str = typer.Option(
        "7d", help="Remove uploaded files unused this long (since uploaded or last given a job; not while a job runs)."
    ),
    max_upload_gb: float = typer.Option(16.0, help="Largest file accepted, in GiB."),
) -> None:
    """Serve segmentation as a service: resumable uploads, jobs (flow runs), live previews, signed downloads."""
    from labpipe.blocks import layout
    from labpipe.blocks.seg import segmentation_defaults
    from labpipe.config import get_settings
    from labpipe.errors import LabpipeError
    from labpipe.flows.segment import PrefectJobRunner
    from labpipe.seg.service.auth import parse_ttl
    from labpipe.seg.service.server import build_service, host_environment, uvicorn_config
    from labpipe.seg.service.settings import ServiceSettings

    try:
        settings = ServiceSettings(
            data=data or get_settings().home / "seg" / "service",
            key_file=_key_file(key_file),
            default_model=segmentation_defaults().model,
            upload_max_age_s=parse_ttl(upload_max_age),
            file_max_age_s=parse_ttl(file_max_age),
            max_upload_bytes=int(max_upload_gb * (1 << 30)),
        )
        service = build_service(settings, PrefectJobRunner(deployment), host_environment(layout().ensure()))
        config = uvicorn_config(service, host, port, certfile, keyfile)
    except LabpipeError as exc:
        fail(exc)
    import uvicorn

    typer.echo(
        f"segmentation service on {'https' if certfile else 'http'}://{host}:{port}/v1 (data {settings.data}; "
        f"tokens: labpipe seg token --user NAME)",
        err=True,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
