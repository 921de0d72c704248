"""Pose models published to, and resolved from, the lab's model registry (``labpipe.registry``).

A published pose model is a DeepLabCut project cut down to what inference and
provenance need: ``config.yaml``, the shuffle's ``pytorch_config.yaml`` and final
snapshot, the training-dataset split, the labels and DeepLabCut's evaluation, plus
``labpipe-pose.json`` (the card: bodyparts, the frame rate and resolution the model was
trained on, train/test pixel errors). The card is also the registry entry's ``config``,
so workers check a video against a model without downloading it.

Workers call ``resolve(name)``: the registry gives a verified local copy; a runnable
project is made beside it (``config.yaml`` with this host's ``project_path``, files
linked, not copied) because DeepLabCut finds snapshots through the project path.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from labpipe.errors import InvalidInput
from labpipe.files import atomic_path
from labpipe.pose.train import TrainedModel

MODEL_TYPE = "deeplabcut"
CARD_FILE = "labpipe-pose.json"
READY_FILE = ".labpipe-ready"


@dataclass(frozen=True)
class PoseModelCard:
    """What a worker must know about a pose model before using it."""

    model_id: str
    name: str
    bodyparts: tuple[str, ...]
    fps: float
    width: int
    height: int
    train_error_px: float
    test_error_px: float
    backbone: str
    labelled_frames: int
    deeplabcut: str

    @classmethod
    def from_registry(cls, model_id: str, config: dict, metrics: dict) -> PoseModelCard:
        width, height = (int(v) for v in str(config["resolution"]).split("x"))
        return cls(
            model_id=model_id,
            name=str(config.get("name", "")),
            bodyparts=tuple(config["bodyparts"]),
            fps=float(config["fps"]),
            width=width,
            height=height,
            train_error_px=float(metrics.get("train_error_px", float("nan"))),
            test_error_px=float(metrics.get("test_error_px", float("nan"))),
            backbone=str(config.get("backbone", "")),
            labelled_frames=int(config.get("labelled_frames", 0)),
            deeplabcut=str(config.get("deeplabcut", "")),
        )

    @property
    def resolution(self) -> tuple[int, int]:
        return self.width, self.height

    def row(self) -> dict:
        """The ``PoseModel`` table row of this model."""
        return dict(
            model_id=self.model_id,
            model_name=self.name,
            bodyparts=",".join(self.bodyparts),
            fps=self.fps,
            width=self.width,
            height=self.height,
            train_error_px=self.train_error_px,
            test_error_px=self.test_error_px,
            backbone=self.backbone,
            labelled_frames=self.labelled_frames,
            deeplabcut=self.deeplabcut,
        )


@dataclass(frozen=True)
class RunnableModel:
    """A resolved model with a DeepLabCut project on this host that ``analyze_videos`` can use."""

    card: PoseModelCard
    project_config: Path


class PoseModelStore(Protocol):
    """Where pose models are published and found (the registry; a plain folder would do the same)."""

    def publish(self, trained: TrainedModel, *, alias: str | None = None) -> PoseModelCard: ...

    def card(self, name: str) -> PoseModelCard: ...

    def resolve(self, name: str) -> RunnableModel: ...


def _publish_folder(trained: TrainedModel, staging: Path) -> str:
    """Copy what a model needs into ``staging``; returns the snapshot's path relative to it."""
    project = trained.project_config.parent
    wanted = [trained.project_config, trained.snapshot]
    wanted += [trained.model_folder / "train" / n for n in ("pytorch_config.yaml", "learning_stats.csv", "train.txt")]
    wanted += sorted((trained.model_folder / "test").glob("*.yaml"))
    wanted += sorted(p for p in (project / "training-datasets").rglob("*") if p.is_file())
    wanted += sorted(p for p in (project / "evaluation-results-pytorch").rglob("*") if p.is_file())
    wanted += sorted((project / "labeled-data").glob("*/CollectedData_*"))
    for path in wanted:
        if path.is_file():
            target = staging / path.relative_to(project)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    (staging / CARD_FILE).write_text(json.dumps(trained.card(), indent=1, sort_keys=True))
    return trained.snapshot.relative_to(project).as_posix()


class RegistryModelStore:
    """Pose models in a room of the lab's model registry; runnable projects under ``projects_root``."""

    def __init__(self, registry, projects_root: Path) -> None:
        self.registry, self.projects_root = registry, Path(projects_root)

    @classmethod
    def of_room(cls, store, roots) -> RegistryModelStore:
        """The room ``store`` (ModelStoreSettings) configures; runnable copies under ``roots``' scratch."""
        return cls(store.open(roots), roots.scratch / "pose" / "projects")

    def publish(self, trained: TrainedModel, *, alias: str | None = None) -> PoseModelCard:
        """Publish ``trained`` (idempotent: the same files give the same id); ``alias`` defaults to its name."""
        card = trained.card()
        config = {k: v for k, v in card.items() if k != "evaluation"}
        metrics = dict(card["evaluation"])
        # the copy is only the upload's source (the registry stages and verifies the real write)
        with tempfile.TemporaryDirectory(prefix=".publish-", dir=trained.project_config.parent.parent) as tmp:
            staging = Path(tmp)
            checkpoint = _publish_folder(trained, staging)
            entry = self.registry.publish(
                staging,
                model_type=MODEL_TYPE,
                config=config,
                training={
                    "dataset_hash": trained.labelled["fingerprint"],
                    "epochs": trained.epochs_trained,
                    "final_loss": trained.final_loss,
                    "training_duration_sec": trained.training_seconds,
                    "device": trained.device,
                    "pretrained_backbone": trained.pretrained_backbone,
                },
                checkpoint=checkpoint,
                alias=alias or trained.name,
                tags=["pose"],
                metrics=metrics,
                notes=f"DeepLabCut {card['deeplabcut']} pose model, {card['backbone']} backbone",
            )
        return PoseModelCard.from_registry(entry.id, entry.config, entry.metrics)

    def _entry(self, name: str):
        entry = self.registry.show(name)
        if entry.model_type != MODEL_TYPE:
            raise InvalidInput(name, f"names a {entry.model_type} model, not a pose ({MODEL_TYPE}) model")
        return entry

    def card(self, name: str) -> PoseModelCard:
        """The card of the model ``name`` (alias or id) names, from the manifest alone (no download)."""
        entry = self._entry(name)
        return PoseModelCard.from_registry(entry.id, entry.config, entry.metrics)

    def resolve(self, name: str) -> RunnableModel:
        """Download (once, verified) and make a runnable project of the model ``name`` names."""
        entry = self._entry(name)
        resolved = self.registry.resolve(entry.id)
        card = PoseModelCard.from_registry(entry.id, entry.config, entry.metrics)
        return RunnableModel(card, materialise(resolved.path, self.projects_root / entry.id))


def materialise(model_folder: Path, target: Path) -> Path:
    """A DeepLabCut project at ``target`` made of links to ``model_folder``; returns its config.yaml."""
    import yaml

    config = target / "config.yaml"
    if (target / READY_FILE).is_file():
        return config
    with atomic_path(target) as staging:
        for source in sorted(p for p in Path(model_folder).rglob("*") if p.is_file()):
            relative = source.relative_to(model_folder)
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            if source.name in ("config.yaml", "pytorch_config.yaml"):
                data = yaml.safe_load(source.read_text())
                if source.name == "config.yaml":
                    data["project_path"] = str(target)
                else:
                    meta = data.setdefault("metadata", {})
                    meta["project_path"] = str(target)
                    meta["pose_config_path"] = str(target / relative)
                (staging / relative).write_text(yaml.safe_dump(data, sort_keys=False))
            else:
                os.symlink(source.resolve(), staging / relative)
        (staging / READY_FILE).write_text(str(model_folder) + "\n")
    return config
