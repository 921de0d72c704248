"""``labpipe pose``: train a DeepLabCut model, assign models to videos, analyse, list tasks and stuck jobs."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from labpipe.cli.common import echo_json, fail, progress_bar

NAME = "pose"
app = typer.Typer(help="Pose estimation with DeepLabCut 3 (gpu pool).", no_args_is_help=True)


def _database():
    from labpipe.blocks import lab_database

    return lab_database()


def _roots():
    from labpipe.blocks import layout

    return layout()


def _store(roots):
    from labpipe.blocks.pose import pose_models

    return pose_models("default", roots)


@app.command()
def train(
    labelled: Path = typer.Argument(..., help="Folder of DeepLabCut labelled frames (CollectedData_*.h5 inside)."),
    name: str = typer.Option(..., help="Model name; published as this alias in the model registry."),
    videos: Path = typer.Option(None, help="Folder holding the source videos of the labelled frames."),
    small: bool = typer.Option(False, help="The small CPU settings (resnet18, 30 epochs, lr 1e-3, no schedule)."),
    epochs: int = typer.Option(None, help="Override the number of epochs."),
    device: str = typer.Option(None, help="auto, cuda, cuda:N or cpu."),
) -> None:
    """Create or reuse a project, build the training dataset, train, evaluate and publish the model."""
    from labpipe.blocks.pose import training_settings
    from labpipe.errors import LabpipeError
    from labpipe.pose.labelled import load_labelled_set
    from labpipe.pose.schema import record_model, tables
    from labpipe.pose.settings import PoseTrainingSettings
    from labpipe.pose.train import train_model

    overrides = {k: v for k, v in {"epochs": epochs, "device": device}.items() if v is not None}
    settings = PoseTrainingSettings.small(**overrides) if small else training_settings("default", overrides)
    roots = _roots()
    try:
        labelled_set = load_labelled_set(labelled, videos=videos)
        typer.echo(f"labelled set: {json.dumps(labelled_set.summary())}")
        progress, update = progress_bar(f"training {name} (epochs)")
        with progress:
            trained = train_model(labelled_set, name, roots.models / "pose-training", settings, progress=update)
        card = _store(roots).publish(trained)
    except LabpipeError as exc:
        fail(exc)
    record_model(tables(_database()), card)
    echo_json({**card.__dict__, "evaluation": trained.evaluation.__dict__, "reused": trained.reused})


@app.command()
def assign(
    model: str = typer.Argument(..., help="Model alias or id in the registry."),
    file_name: str = typer.Option(None, "--file", help="Only tasks of this video file name."),
    session: str = typer.Option(None, help="Only tasks of this session id."),
    replace: bool = typer.Option(False, help="Delete existing results of these tasks and redo them."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Name MODEL as the model of pose tasks; videos it was not trained for are refused, not assigned."""
    from labpipe.errors import LabpipeError
    from labpipe.pose.populate import assign_model

    roots = _roots()
    try:
        outcomes = assign_model(
            _database(),
            _store(roots),
            model,
            roots.share,
            file_name=file_name,
            restriction={"session_id": session} if session else None,
            replace=replace,
        )
    except LabpipeError as exc:
        fail(exc)
    if as_json:
        echo_json(outcomes)
    else:
        for row in outcomes:
            typer.echo(
                f"{row['outcome']:<8} {row['session_id']}/{row['scan_id']}/{row['file_name']} {row.get('reason', '')}"
            )
    if any(row["outcome"] == "refused" for row in outcomes):
        raise typer.Exit(1)


@app.command()
def analyze(
    max_calls: int = typer.Option(None, help="Analyse at most this many videos."),
    share: Path = typer.Option(None, help="Share root; default: the storage layout's."),
    device: str = typer.Option(None, help="auto, cuda, cuda:N or cpu."),
    cpu_threads: int = typer.Option(None, help="Torch threads on the CPU (1 per worker when several share a host)."),
    summary: Path = typer.Option(None, help="Write the preview of analysed frames to this PNG."),
) -> None:
    """Run one pose worker in this process (the flow does the same on the gpu pool); prints what it did."""
    from labpipe.pose import dlc
    from labpipe.pose.populate import run_population
    from labpipe.pose.schema import PoseContext
    from labpipe.pose.settings import PoseAnalysisSettings

    roots = _roots()
    if share:
        roots = roots.model_copy(update={"share": share})
    chosen = {"device": device, "cpu_threads": cpu_threads}
    settings = PoseAnalysisSettings(**{k: v for k, v in chosen.items() if v is not None})
    db = _database()
    dlc.deeplabcut()  # imported before any task is reserved, as the flow does
    context = PoseContext(
        roots.share, _store(roots), roots.scratch / "pose" / "analyses", settings, extra_outputs=(db.blobs,)
    )
    progress, update = progress_bar("videos analysed")
    with progress:
        result = run_population(db, context, max_calls=max_calls, progress=update)
    if summary and result.analysed:
        from labpipe.pose.summary import preview_figure

        figure = preview_figure(db, roots.share, result.analysed, frames=settings.preview_frames)
        if figure is not None:
            figure.savefig(summary, dpi=100)
    echo_json(result.as_json())
    if result.errors:
        raise typer.Exit(1)


@app.command()
def tasks(
    check: bool = typer.Option(False, help="Preflight every pending task (no analysis) and show its problems."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every pose task: its video, model and state (unassigned, pending, reserved, error, done)."""
    from labpipe.pose.populate import preflight_tasks, task_rows
    from labpipe.pose.schema import PoseContext

    db = _database()
    rows = task_rows(db)
    if check:
        roots = _roots()
        context = PoseContext(
            roots.share, _store(roots), roots.scratch / "pose" / "analyses", extra_outputs=(db.blobs,)
        )
        problems = {
            (r["session_id"], r["scan_id"], r["file_name"]): r["problems"] for r in preflight_tasks(db, context)
        }
        for row in rows:
            row["problems"] = problems.get((row["session_id"], row["scan_id"], row["file_name"]), [])
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        line = f"{row['state']:<10} {row['video']}  model {row['model'] or '-'}"
        typer.echo(line + (f"  {row['error']}" if row.get("error") else ""))
        for problem in row.get("problems", []):
            typer.echo(f"    {problem}")
    typer.echo(f"{len(rows)} pose tasks")


@app.command()
def jobs(
    clear: bool = typer.Option(False, help="Clear stuck and failed jobs so they are retried."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Pose tasks reserved by dead workers (stuck) or failed (refused, preflight, DeepLabCut errors)."""
    from labpipe.db.jobs import clear_jobs, job_problems
    from labpipe.pose.schema import tables

    populated = [tables(_database()).PoseEstimation]
    problems = job_problems(populated)
    if as_json:
        echo_json([p.as_json() for p in problems])
    else:
        for p in problems:
            typer.echo(f"{p.status:<6} {p.key} (host {p.host}, pid {p.pid}) {p.message}")
        typer.echo(f"{len(problems)} stuck or failed pose jobs")
    if clear:
        typer.echo(f"cleared {clear_jobs(populated)} jobs; the next worker retries them")


@app.command()
def simulate(
    out: Path = typer.Argument(..., help="Folder to write into: videos/, labeled-data/ and test videos."),
    labelled_frames: int = typer.Option(20),
    size: int = typer.Option(64, help="Frame width and height in pixels."),
    fps: float = typer.Option(25.0),
) -> None:
    """Videos of two moving markers with known positions, and DeepLabCut labelled frames cut from one."""
    from labpipe.pose.simulate import write_labelled_frames, write_marker_video

    truth = write_marker_video(out / "videos" / "train_cam.mp4", frames=100, size=size, fps=fps, seed=1)
    write_labelled_frames(out / "labeled-data", out / "videos" / "train_cam.mp4", truth, n_frames=labelled_frames)
    typer.echo(
        f"labelled frames under {out / 'labeled-data'}; train with: labpipe pose train {out / 'labeled-data'} "
        f"--videos {out / 'videos'} --name dots --small"
    )
