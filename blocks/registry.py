"""The model store block: where a room of the model registry lives, and this host's cache."""

from __future__ import annotations

from labpipe.registry.settings import ModelStoreSettings
from prefect.blocks.core import Block


class ModelStore(Block, ModelStoreSettings):
    """A room of the model registry: a folder every worker mounts, or an S3 bucket (credentials as secrets)."""

    _block_type_name = "labpipe model store"
    _block_type_slug = "labpipe-model-store"
    _description = (
        "Room-level model registry shared by every worker: manifest with models and aliases, model files, "
        "in a folder (default: <models root>/registry) or an S3-compatible bucket with conditional writes."
    )
    _code_example = """
    from labpipe.blocks.registry import ModelStore
    model_store = ModelStore.load("BLOCK_NAME")
    registry = model_store.open()
    model = registry.resolve("mei-twin-ANM-3001")
    print(model.id, model.checkpoint)
    """


__all__ = ["ModelStore"]
