"""Pose estimation flows (ADAMACS GPU_SERVER workers, DeepLabCut 3): train a model, populate the pose table.

Deployments (deployments/prefect.yaml, gpu pool): ``pose-train/labelled`` trains, evaluates and
publishes a model from labelled frames; ``pose-estimation/worker`` is one worker of the
population (start several; each video is analysed once, one at a time per GPU through the
``gpu`` concurrency limit, which is only held while DeepLabCut runs, after preflight).
"""

from __future__ import annotations

from pathlib import Path

from labpipe.blocks import database_settings, layout
from labpipe.blocks.pose import analysis_settings, training_settings
from labpipe.blocks.registry import model_store
from labpipe.db.connect import open_lab_database
from labpipe.db.settings import DatabaseSettings
from labpipe.flows.common import Progress, gpu_slot, logger, markdown_table, png_markdown, publish_markdown
from labpipe.layout import Layout
from labpipe.pose.models import RegistryModelStore
from labpipe.pose.populate import PoseRunResult, preflight_tasks, run_population
from labpipe.pose.schema import PoseContext, record_model
from labpipe.pose.settings import PoseAnalysisSettings, PoseTrainingSettings
from labpipe.registry import ModelStoreSettings
from prefect import flow, task


def pose_context(roots: Layout, store, settings: PoseAnalysisSettings, *, slot=None) -> PoseContext:
    return PoseContext(
        share=roots.share,
        store=store,
        staging=roots.scratch / "pose" / "analyses",
        settings=settings,
        slot=slot or gpu_slot,
        extra_outputs=(roots.blobs,),
    )


# --- training -----------------------------------------------------------------------------------


@task(name="check-labelled-frames", task_run_name="check-labelled-{labelled}")
def check_labelled(labelled: Path, videos: Path | None) -> dict:
    from labpipe.pose.labelled import load_labelled_set

    return load_labelled_set(labelled, videos=videos).summary()


@task(name="train-pose-network", task_run_name="train-{name}")
def train_network_task(labelled: Path, videos: Path | None, name: str, workdir: Path, settings: PoseTrainingSettings):
    from labpipe.pose.labelled import load_labelled_set
    from labpipe.pose.train import train_model

    labelled_set = load_labelled_set(labelled, videos=videos)
    with gpu_slot():
        return train_model(labelled_set, name, workdir, settings, progress=Progress(f"training {name}: epochs"))


@task(name="publish-pose-model", task_run_name="publish-{trained.name}", retries=2, retry_delay_seconds=10)
def publish_task(trained, store: ModelStoreSettings, roots: Layout, db: DatabaseSettings) -> dict:
    from labpipe.pose.schema import tables

    card = RegistryModelStore.of_room(store, roots).publish(trained)
    record_model(tables(open_lab_database(db, blobs=roots.blobs)), card)
    return card.__dict__


def _training_summary(trained, card: dict) -> str:
    e = trained.evaluation
    rows = [
        {"frames": "train", "count": e.train_frames, "mean error px": e.train_error_px},
        {"frames": "test", "count": e.test_frames, "mean error px": e.test_error_px},
    ]
    facts = trained.labelled
    return "\n".join(
        [
            f"# Pose model `{card['name']}` published as `{card['model_id']}`",
            f"DeepLabCut {trained.card()['deeplabcut']}, backbone {trained.settings['backbone']}, "
            f"{trained.epochs_trained} epochs in {trained.training_seconds} s on {trained.device} "
            f"({'ImageNet' if trained.pretrained_backbone else 'random'} initialisation); "
            f"reused from an earlier run: {', '.join(trained.reused) or 'nothing'}.",
            f"Trained on {facts['labelled_frames']} labelled frames of {', '.join(facts['videos'])} "
            f"({facts['resolution']} at {facts['fps']:g} fps): only such videos will be accepted.",
            f"Bodyparts: {', '.join(facts['bodyparts'])}.\n",
            "## Evaluation (DeepLabCut)\n",
            markdown_table(rows),
        ]
    )


@flow(name="pose-train", flow_run_name="pose-train-{name}", log_prints=True)
def train_pose_model(
    labelled: str,
    name: str,
    videos: str | None = None,
    settings: dict | None = None,
    training_block: str | None = "default",
    registry_block: str | None = "default",
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """Train a DeepLabCut 3 pose model from labelled frames, evaluate it, publish it to the model registry.

    Args:
        labelled: Folder of labelled frames (a DeepLabCut labeled-data folder with its CollectedData file).
        name: Model name (registry alias pose-NAME).
        videos: Folder of the videos the frames came from, when the labelled folder does not hold them.
        settings: Training settings that override the pose training block for this run (e.g. {"epochs": 5}).
        training_block: Name of the labpipe pose training block.
        registry_block: Name of the labpipe model store block (the room's model registry).
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    roots = layout(layout_block)
    labelled_path = Path(labelled) if Path(labelled).is_absolute() else roots.share / labelled
    videos_path = (Path(videos) if Path(videos).is_absolute() else roots.share / videos) if videos else None
    summary = check_labelled(labelled_path, videos_path)
    logger().info("labelled set: %s", summary)
    trained = train_network_task(
        labelled_path, videos_path, name, roots.models / "pose-training", training_settings(training_block, settings)
    )
    card = publish_task(trained, model_store(registry_block), roots, database_settings(db_block))
    publish_markdown(_training_summary(trained, card), key=f"pose-train-{name}".lower(), description="pose model")
    return {**card, "evaluation": trained.evaluation.__dict__}


# --- population ---------------------------------------------------------------------------------


@task(name="preflight-pose-tasks", task_run_name="preflight-pose-tasks")
def preflight_task(db: DatabaseSettings, roots: Layout, store: ModelStoreSettings, settings: PoseAnalysisSettings):
    """Every pending task checked without GPU time; problems are reported now, before any worker waits."""
    context = pose_context(roots, RegistryModelStore.of_room(store, roots), settings)
    rows = preflight_tasks(open_lab_database(db, blobs=roots.blobs), context)
    for row in rows:
        for problem in row["problems"]:
            logger().warning("task %s will be refused: %s", row["file_name"], problem)
    return rows


@task(name="populate-pose", task_run_name="populate-pose")
def populate_task(
    max_calls, db: DatabaseSettings, roots: Layout, store: ModelStoreSettings, settings: PoseAnalysisSettings
) -> PoseRunResult:
    from labpipe.pose import dlc

    dlc.deeplabcut()  # the slow import happens before a GPU slot is taken
    context = pose_context(roots, RegistryModelStore.of_room(store, roots), settings)
    return run_population(
        open_lab_database(db, blobs=roots.blobs), context, max_calls=max_calls, progress=Progress("videos analysed")
    )


@task(name="summarise-pose-run", task_run_name="summarise-pose-run")
def summary_task(result: PoseRunResult, db_settings: DatabaseSettings, roots: Layout, preview_frames: int) -> str:
    import matplotlib.pyplot as plt
    from labpipe.pose.summary import preview_figure, result_rows, summary_markdown

    db = open_lab_database(db_settings, blobs=roots.blobs)
    text = summary_markdown(result_rows(db, result.analysed), result.errors, result.remaining, markdown_table)
    figure = preview_figure(db, roots.share, result.analysed, frames=preview_frames)
    if figure is not None:
        text += "\n## Frames with predicted points\n\n" + png_markdown(figure, "frames with predicted points")
        plt.close(figure)
    publish_markdown(text, key="pose-estimation-summary", description="pose estimation run")
    return text


@flow(name="pose-estimation", flow_run_name="pose-estimation-worker")
def populate_pose(
    max_calls: int | None = None,
    analysis_block: str | None = "default",
    registry_block: str | None = "default",
    layout_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """One worker of the pose population: preflight, then analyse videos (each once) until none is left.

    Args:
        max_calls: Stop after this many videos (empty: until none is left).
        analysis_block: Name of the labpipe pose analysis block (device, batch size, checks).
        registry_block: Name of the labpipe model store block the models come from.
        layout_block: Name of the labpipe storage layout block (where data lives): "default" unless a lab has several.
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    settings = analysis_settings(analysis_block)  # each block resolved once for the run
    db, roots, store = database_settings(db_block), layout(layout_block), model_store(registry_block)
    checked = preflight_task(db, roots, store, settings)
    result = populate_task(max_calls, db, roots, store, settings)
    summary_task(result, db, roots, settings.preview_frames)
    return {
        "analysed": len(result.analysed),
        "errors": len(result.errors),
        "remaining": result.remaining,
        "refused_at_preflight": sum(1 for row in checked if row["problems"]),
    }
