"""Pose estimation blocks: how pose models are trained and how workers analyse videos."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labpipe.blocks.resolve import resolve
from labpipe.pose.settings import PoseAnalysisSettings, PoseTrainingSettings
from prefect.blocks.core import Block

if TYPE_CHECKING:
    from labpipe.layout import Layout
    from labpipe.pose.models import RegistryModelStore


class PoseTraining(Block, PoseTrainingSettings):
    """How DeepLabCut 3 pose models are trained (backbone, epochs, learning rate, augmentation, device)."""

    _block_type_name = "labpipe pose training"
    _block_type_slug = "labpipe-pose-training"
    _description = (
        "DeepLabCut 3 (PyTorch) training settings: timm ResNet backbone, epochs, learning rate and schedule, "
        "train fraction, crop sampling and up-sizing of small videos, augmentation, ImageNet weights, device."
    )
    _code_example = """
    from labpipe.blocks.pose import PoseTraining
    settings = PoseTraining.load("BLOCK_NAME")
    print(settings.backbone, settings.epochs)
    """


class PoseAnalysis(Block, PoseAnalysisSettings):
    """How pose-estimation workers analyse videos (device, batch size, checksum check, preview frames)."""

    _block_type_name = "labpipe pose analysis"
    _block_type_slug = "labpipe-pose-analysis"
    _description = (
        "Pose-estimation worker settings: device (auto follows LABPIPE_DEVICE), inference batch size, "
        "whether a video must still match its ingest checksum, frames drawn in the run summary."
    )
    _code_example = """
    from labpipe.blocks.pose import PoseAnalysis
    settings = PoseAnalysis.load("BLOCK_NAME")
    print(settings.device, settings.batch_size)
    """


def training_settings(name: str | None = "default", overrides: dict | None = None) -> PoseTrainingSettings:
    """The ``PoseTraining`` document ``name`` (or the defaults) with ``overrides`` (a run's own values) applied."""
    settings = resolve(PoseTraining, name, PoseTrainingSettings())
    return PoseTrainingSettings.model_validate(settings.model_dump() | (overrides or {}))


def analysis_settings(name: str | None = "default") -> PoseAnalysisSettings:
    """The ``PoseAnalysis`` document ``name``, or the defaults."""
    return resolve(PoseAnalysis, name, PoseAnalysisSettings())


def pose_models(registry_name: str | None, roots: Layout) -> RegistryModelStore:
    """Pose models through the lab's model registry (``ModelStore`` document), runnable copies in scratch."""
    from labpipe.blocks.registry import model_store
    from labpipe.pose.models import RegistryModelStore

    return RegistryModelStore.of_room(model_store(registry_name), roots)


__all__ = ["PoseAnalysis", "PoseTraining", "analysis_settings", "pose_models", "training_settings"]
