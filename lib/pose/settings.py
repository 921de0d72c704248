"""Pose settings: how a model is trained and how videos are analysed (mirrored by blocks in ``labpipe.blocks.pose``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# timm ResNet names -> channels of their last stage (what the heads are built for)
BACKBONE_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet50_gn": 2048, "resnet101": 2048}


class PoseTrainingSettings(BaseModel):
    """How a DeepLabCut 3 (PyTorch) pose model is trained. Defaults are DeepLabCut's own for a lab GPU."""

    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet50_gn", "resnet101"] = Field(
        "resnet50_gn", description="timm ResNet backbone (DeepLabCut's default is resnet50_gn)."
    )
    epochs: int = Field(200, ge=1, description="Training epochs.")
    learning_rate: float = Field(5e-4, gt=0, description="AdamW learning rate.")
    scheduler: bool = Field(True, description="Keep DeepLabCut's step learning-rate schedule (off: constant rate).")
    batch_size: int = Field(8, ge=1, description="Training batch size.")
    train_fraction: float = Field(0.8, gt=0, lt=1, description="Share of labelled frames trained on; the rest test.")
    crop_sampling: Literal["auto", "keep", "remove"] = Field(
        "auto",
        description="DeepLabCut pads/crops training images to 448x448; auto removes that for smaller videos "
        "(on 128x128 frames it made epochs ~11x slower for nothing).",
    )
    min_input_size: int = Field(
        128,
        ge=0,
        description="Frames whose longest side is smaller are resized up to this inside the model (finer heatmaps; "
        "predictions are mapped back to video pixels). 0: never.",
    )
    augmentation: Literal["default", "light"] = Field(
        "default",
        description="DeepLabCut's default augmentation, or light (small rotations/scaling, no blur or noise).",
    )
    pretrained: Literal["auto", "always", "never"] = Field(
        "auto",
        description="ImageNet backbone weights: auto uses them when cached locally (HF_HOME), otherwise starts from "
        "a random initialisation without touching the network.",
    )
    seed: int = Field(42, description="Training seed.")
    device: str = Field("auto", description="auto (cuda if present), cuda, cuda:N, cpu.")
    cpu_threads: int | None = Field(
        None, ge=1, description="Torch threads when training on the CPU; empty: torch's default (one per core)."
    )

    @classmethod
    def small(cls, **overrides) -> PoseTrainingSettings:
        """Measured on a 2-core CPU: resnet18, lr 1e-3, no schedule, 30 epochs on 16 frames of two dots in ~30 s."""
        base = dict(
            backbone="resnet18", epochs=30, learning_rate=1e-3, scheduler=False, augmentation="light", device="cpu"
        )
        return cls(**{**base, **overrides})


class PoseAnalysisSettings(BaseModel):
    """How pose-estimation workers analyse videos."""

    device: str = Field("auto", description="auto (LABPIPE_DEVICE, else cuda if present), cuda, cuda:N, cpu.")
    batch_size: int = Field(8, ge=1, description="Frames per inference batch.")
    check_checksum: bool = Field(
        True, description="Refuse a video whose SHA-256 no longer matches the one recorded at ingest."
    )
    preview_frames: int = Field(4, ge=0, description="Frames drawn with their predicted points in the run summary.")
    cpu_threads: int | None = Field(
        None,
        ge=1,
        description="Torch threads when analysing on the CPU; empty: torch's default. Several workers on one "
        "CPU host: 1 each (measured: 2 threads on 2 busy cores ran 5x slower than 1).",
    )
