"""Segmentation models in the lab's model registry: alias ``seg-<name>``, fetched into the models root when a
host lacks one, published after training. The models root keeps a model either way: the registry is a way
to share it between hosts, so failing to reach it is a warning, never a failed run."""

from __future__ import annotations

import logging
from pathlib import Path

from labpipe.errors import ConfigError
from labpipe.layout import Layout
from labpipe.seg.nnunet import ModelInfo, install_model, load_model_info

log = logging.getLogger("labpipe.seg")


def registry_alias(name: str) -> str:
    """The registry alias of segmentation model ``name``."""
    return f"seg-{name}"


def ensure_model(roots: Layout, name: str, registry=None) -> ModelInfo:
    """The model from the models root, or fetched from ``registry`` (alias ``seg-<name>``) into it.

    Raises the models root's ``ConfigError`` when neither has it.
    """
    try:
        return load_model_info(roots, name)
    except ConfigError as missing:
        if registry is None:
            raise
        try:
            resolved = registry.resolve(registry_alias(name))
        except Exception as exc:
            log.info("model %s is not in the registry either: %s", name, exc)
            raise missing from None
        log.info("model %s fetched from the model registry (%s)", name, resolved.id)
        return install_model(resolved.path, roots, name)


def publish_model(registry, info: ModelInfo, final_loss: float | None) -> str | None:
    """Publish a trained model to ``registry``; its id, or None (with a warning) when the registry fails."""
    try:
        entry = registry.publish(
            Path(info.folder),
            model_type="nnunet",
            config={
                "trainer": info.trainer,
                "plans": info.plans,
                "configuration": info.configuration,
                "network": info.network,
                "labels": info.labels,
                "patch_size": info.patch_size,
            },
            training={
                "dataset_hash": info.checkpoint_sha256[:12],
                "epochs": info.epochs or 0,
                "final_loss": final_loss,
                "training_duration_sec": info.train_seconds or 0.0,
            },
            checkpoint="fold_all/checkpoint_final.pth",
            alias=registry_alias(info.name),
            tags=["segmentation", "cryo-et"],
        )
        return entry.id
    except Exception as exc:  # the registry is a convenience here; the model is safe in the models root
        log.warning("model %s not published to the model registry: %s", info.name, exc)
        return None
