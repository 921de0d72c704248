"""Train a DeepLabCut 3 (PyTorch) pose model from a labelled set: project, training dataset, network, evaluation.

Idempotent: the work folder is named after the model, the labelled set's fingerprint and
the settings that change the network; a rerun after a crash reuses the project, the
training dataset, a finished network and its evaluation, and only does what is missing.
Project and scorer names carry the date DeepLabCut creates them on, so every path is
taken from what DeepLabCut returns or writes, never rebuilt by hand.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from labpipe.errors import InvalidInput, ToolError
from labpipe.pose import dlc
from labpipe.pose.labelled import LabelledSet
from labpipe.pose.settings import BACKBONE_CHANNELS, PoseTrainingSettings

log = logging.getLogger("labpipe.pose")
FINGERPRINT_FILE = ".labpipe-fingerprint"
SHUFFLE = 1
DLC_CROP_SIZE = 448  # DeepLabCut's crop_sampling width/height


@dataclass
class Evaluation:
    """DeepLabCut's evaluation of the trained snapshot: mean pixel error on train and test frames."""

    train_error_px: float
    test_error_px: float
    train_frames: int
    test_frames: int
    pcutoff: float
    train_error_pcutoff_px: float
    test_error_pcutoff_px: float


@dataclass
class TrainedModel:
    """A trained project on disk, ready to publish."""

    name: str
    project_config: Path
    model_folder: Path  # dlc-models-pytorch/iteration-0/<task><date>-trainset<NN>shuffle1
    snapshot: Path
    evaluation: Evaluation
    labelled: dict
    settings: dict
    scorer: str  # DeepLabCut's scorer name for analyses with this snapshot
    epochs_trained: int
    final_loss: float | None
    training_seconds: float
    device: str
    pretrained_backbone: bool
    reused: list[str] = field(default_factory=list)  # steps found done from an earlier run

    def card(self) -> dict:
        """What workers need to know about the model without loading it (recorded with it when published)."""
        return {
            "name": self.name,
            "bodyparts": self.labelled["bodyparts"],
            "fps": self.labelled["fps"],
            "resolution": self.labelled["resolution"],
            "labelled_frames": self.labelled["labelled_frames"],
            "dataset_fingerprint": self.labelled["fingerprint"],
            "backbone": self.settings["backbone"],
            "deeplabcut": dlc.version(),
            "scorer": self.scorer,
            "evaluation": asdict(self.evaluation),
        }


def _existing_project(workdir: Path, fingerprint: str) -> Path | None:
    for config in sorted(workdir.glob("*/config.yaml")):
        marker = config.parent / FINGERPRINT_FILE
        if marker.is_file() and marker.read_text().strip() == fingerprint:
            return config
    return None


def create_project(labelled: LabelledSet, name: str, workdir: Path, settings: PoseTrainingSettings) -> Path:
    """A DeepLabCut project holding the labelled set (reused when one with the same fingerprint exists)."""
    workdir.mkdir(parents=True, exist_ok=True)
    existing = _existing_project(workdir, labelled.fingerprint)
    if existing is not None:
        return existing
    deeplabcut = dlc.deeplabcut()
    from deeplabcut.utils import auxiliaryfunctions

    # DeepLabCut returns an existing project of the same name and day; a half-made one is removed first
    for stale in workdir.glob(f"{name}-{labelled.scorer}-*"):
        shutil.rmtree(stale)
    videos = [v.video.path for v in labelled.videos]
    config = deeplabcut.create_new_project(name, labelled.scorer, videos, working_directory=str(workdir))
    if config == "nothingcreated" or not Path(config).is_file():
        raise ToolError(labelled.root, f"DeepLabCut created no project from the videos {videos}")
    config = Path(config)
    cfg = auxiliaryfunctions.read_config(str(config))
    skeleton = []
    if labelled.project_config is not None:
        skeleton = auxiliaryfunctions.read_config(str(labelled.project_config)).get("skeleton") or []
    cfg.update(bodyparts=list(labelled.bodyparts), skeleton=skeleton, TrainingFraction=[settings.train_fraction])
    auxiliaryfunctions.write_config(str(config), cfg)
    for video in labelled.videos:
        shutil.copytree(video.folder, config.parent / "labeled-data" / video.stem, dirs_exist_ok=True)
    (config.parent / FINGERPRINT_FILE).write_text(labelled.fingerprint + "\n")
    return config


def _model_folder(config: Path, settings: PoseTrainingSettings) -> Path:
    from deeplabcut.core.engine import Engine
    from deeplabcut.utils import auxiliaryfunctions

    cfg = auxiliaryfunctions.read_config(str(config))
    relative = auxiliaryfunctions.get_model_folder(settings.train_fraction, SHUFFLE, cfg, engine=Engine.PYTORCH)
    return config.parent / relative


def create_training_dataset(config: Path, settings: PoseTrainingSettings) -> Path:
    """DeepLabCut's training dataset (shuffle 1); returns the model folder holding pytorch_config.yaml."""
    deeplabcut = dlc.deeplabcut()
    from deeplabcut.core.engine import Engine

    folder = _model_folder(config, settings)
    if not (folder / "train" / "pytorch_config.yaml").is_file():
        # net_type must be one DeepLabCut knows; the backbone is swapped in the pytorch config afterwards
        deeplabcut.create_training_dataset(
            str(config), num_shuffles=1, net_type="resnet_50", engine=Engine.PYTORCH, userfeedback=False
        )
    if not (folder / "train" / "pytorch_config.yaml").is_file():
        raise ToolError(config, f"DeepLabCut wrote no pytorch_config.yaml under {folder}")
    return folder


def configure_network(pytorch_config: Path, settings: PoseTrainingSettings, frame_size: tuple[int, int]) -> dict:
    """Apply the training settings to DeepLabCut's pytorch_config.yaml; returns the new config."""
    import yaml

    cfg = yaml.safe_load(pytorch_config.read_text())
    model = cfg["model"]
    channels = BACKBONE_CHANNELS[settings.backbone]
    model["backbone"]["model_name"] = settings.backbone
    model["backbone_output_channels"] = channels
    for head in model["heads"].values():
        for part in ("heatmap_config", "locref_config"):
            if part in head:
                head[part]["channels"][0] = channels
    train, inference = cfg["data"]["train"], cfg["data"]["inference"]
    longest = max(frame_size)
    if settings.crop_sampling == "remove" or (settings.crop_sampling == "auto" and longest < DLC_CROP_SIZE):
        train["crop_sampling"] = None
    if settings.min_input_size and longest < settings.min_input_size:
        size = {"height": settings.min_input_size, "width": settings.min_input_size, "keep_ratio": True}
        train["resize"], inference["resize"] = dict(size), dict(size)
    if settings.augmentation == "light":
        train.update(
            affine={"p": 0.5, "rotation": 15, "scaling": [0.9, 1.1], "translation": 0},
            motion_blur=False,
            gaussian_noise=False,
        )
    runner = cfg["runner"]
    runner["optimizer"]["params"]["lr"] = settings.learning_rate
    if not settings.scheduler:
        runner["scheduler"] = None
    runner["snapshots"].update(max_snapshots=1, save_epochs=settings.epochs, save_optimizer_state=False)
    runner["eval_interval"] = settings.epochs
    cfg["train_settings"].update(epochs=settings.epochs, batch_size=settings.batch_size, seed=settings.seed)
    pytorch_config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def initial_snapshot(model_folder: Path, cfg: dict) -> Path:
    """A randomly initialised snapshot to start from when no ImageNet weights are available offline."""
    import torch
    from deeplabcut.pose_estimation_pytorch.models import PoseModel

    torch.manual_seed(int(cfg["train_settings"].get("seed", 42)))
    model = PoseModel.build(cfg["model"], pretrained_backbone=False)
    path = model_folder / "train" / "labpipe-init.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


def _final_snapshot(model_folder: Path, epochs: int) -> Path | None:
    done = sorted((model_folder / "train").glob(f"snapshot-*{epochs:03d}.pt"))
    return done[-1] if done else None


class _EpochWatcher:
    """Reports ``(epoch, epochs)`` to ``progress`` by reading DeepLabCut's train.txt while it trains."""

    def __init__(self, log_file: Path, epochs: int, progress: Callable[[int, int], None] | None) -> None:
        self.log_file, self.epochs, self.progress = log_file, epochs, progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def last_epoch(self) -> tuple[int, float | None]:
        import re

        if not self.log_file.is_file():
            return 0, None
        found = re.findall(r"Epoch (\d+)/\d+ .*?train loss ([0-9.eE+-]+)", self.log_file.read_text(errors="replace"))
        return (int(found[-1][0]), float(found[-1][1])) if found else (0, None)

    def _run(self) -> None:
        while not self._stop.wait(2.0):
            if self.progress:
                self.progress(self.last_epoch()[0], self.epochs)

    def __enter__(self) -> _EpochWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def train_network(
    config: Path,
    model_folder: Path,
    settings: PoseTrainingSettings,
    frame_size: tuple[int, int],
    *,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, float | None, float, str, bool, bool]:
    """Train shuffle 1 to ``settings.epochs``; returns (snapshot, final loss, seconds, device, pretrained, reused)."""
    deeplabcut = dlc.deeplabcut()
    device = dlc.resolve_device(settings.device)
    dlc.limit_cpu_threads(device, settings.cpu_threads)
    watcher = _EpochWatcher(model_folder / "train" / "train.txt", settings.epochs, progress)
    done = _final_snapshot(model_folder, settings.epochs)
    pretrained = settings.pretrained == "always" or (
        settings.pretrained == "auto" and dlc.backbone_weights_cached(settings.backbone)
    )
    if done is not None:
        return done, watcher.last_epoch()[1], 0.0, device, pretrained, True
    cfg = configure_network(model_folder / "train" / "pytorch_config.yaml", settings, frame_size)
    start = None
    if not pretrained:
        start = str(initial_snapshot(model_folder, cfg))
        log.info("no ImageNet weights for %s cached: training from a random initialisation", settings.backbone)
    began = time.monotonic()
    with watcher:
        deeplabcut.train_network(str(config), shuffle=SHUFFLE, device=device, snapshot_path=start)
    seconds = time.monotonic() - began
    snapshot = _final_snapshot(model_folder, settings.epochs)
    if snapshot is None:
        raise ToolError(model_folder, f"training finished without a snapshot of epoch {settings.epochs}")
    if progress:
        progress(settings.epochs, settings.epochs)
    return snapshot, watcher.last_epoch()[1], seconds, device, pretrained, False


def evaluate(
    config: Path, settings: PoseTrainingSettings, device: str, *, again: bool = False
) -> tuple[Evaluation, str, bool]:
    """DeepLabCut's evaluation of the final snapshot; (errors, scorer name of that snapshot, found done)."""
    import pandas as pd

    deeplabcut = dlc.deeplabcut()
    from deeplabcut.core.engine import Engine
    from deeplabcut.utils import auxiliaryfunctions

    cfg = auxiliaryfunctions.read_config(str(config))
    folder = config.parent / auxiliaryfunctions.get_evaluation_folder(
        settings.train_fraction, SHUFFLE, cfg, engine=Engine.PYTORCH
    )
    done = not again and any(folder.glob("*-results.csv"))
    if not done:
        deeplabcut.evaluate_network(str(config), shuffles=[SHUFFLE], snapshotindex=-1, device=device)
    results = sorted(folder.glob("*-results.csv"), key=lambda p: p.stat().st_mtime)
    if not results:
        raise ToolError(folder, "DeepLabCut's evaluation wrote no results file")
    row = pd.read_csv(results[-1]).iloc[-1]
    scorer = results[-1].name.removesuffix("-results.csv")
    split = _split_sizes(config, cfg, settings)
    evaluation = Evaluation(
        train_error_px=float(row["train rmse"]),
        test_error_px=float(row["test rmse"]),
        train_frames=split[0],
        test_frames=split[1],
        pcutoff=float(row["pcutoff"]),
        train_error_pcutoff_px=float(row["train rmse_pcutoff"]),
        test_error_pcutoff_px=float(row["test rmse_pcutoff"]),
    )
    return evaluation, scorer, done


def _split_sizes(config: Path, cfg: dict, settings: PoseTrainingSettings) -> tuple[int, int]:
    import pickle

    from deeplabcut.utils import auxiliaryfunctions

    folder = config.parent / auxiliaryfunctions.get_training_set_folder(cfg)
    docs = sorted(folder.glob(f"Documentation_data-*_{int(settings.train_fraction * 100)}shuffle{SHUFFLE}.pickle"))
    if not docs:
        return 0, 0
    with open(docs[0], "rb") as handle:
        _, train_indices, test_indices, _ = pickle.load(handle)  # DeepLabCut's own file, written just now
    return len(train_indices), len(test_indices)


def settings_key(settings: PoseTrainingSettings) -> str:
    """A short hash of what changes the trained network (not where it runs), naming the work folder."""
    import hashlib
    import json

    relevant = settings.model_dump(exclude={"device", "cpu_threads"})
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:8]


def train_model(
    labelled: LabelledSet,
    name: str,
    workdir: Path,
    settings: PoseTrainingSettings,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> TrainedModel:
    """Project -> training dataset -> network -> evaluation, each step skipped when already done."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise InvalidInput(name, "model name must be letters, digits, '-' or '_'")
    workdir = Path(workdir) / f"{name}-{labelled.fingerprint}-{settings_key(settings)}"
    reused = ["project"] if _existing_project(workdir, labelled.fingerprint) else []
    config = create_project(labelled, name, workdir, settings)
    model_folder = _model_folder(config, settings)
    if (model_folder / "train" / "pytorch_config.yaml").is_file():
        reused.append("training dataset")
    model_folder = create_training_dataset(config, settings)
    frame_size = (labelled.width, labelled.height)
    snapshot, loss, seconds, device, pretrained, was_done = train_network(
        config, model_folder, settings, frame_size, progress=progress
    )
    if was_done:
        reused.append("network")
    # a network trained again is evaluated again; a finished one keeps its evaluation
    evaluation, scorer, evaluated = evaluate(config, settings, device, again=not was_done)
    if evaluated:
        reused.append("evaluation")
    return TrainedModel(
        name=name,
        project_config=config,
        model_folder=model_folder,
        snapshot=snapshot,
        evaluation=evaluation,
        labelled=labelled.summary(),
        settings=settings.model_dump(),
        scorer=scorer,
        epochs_trained=settings.epochs,
        final_loss=loss,
        training_seconds=round(seconds, 1),
        device=device,
        pretrained_backbone=pretrained,
        reused=reused,
    )
