"""The model store block: where a room of the model registry lives, and this host's cache."""

from __future__ import annotations

from typing import TYPE_CHECKING

from labpipe.blocks.resolve import resolve
from labpipe.registry.settings import ModelStoreSettings
from prefect.blocks.core import Block

if TYPE_CHECKING:
    from labpipe.registry import Registry


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


def model_store(name: str | None = "default") -> ModelStoreSettings:
    """The ``ModelStore`` document ``name`` as plain settings (picklable for Dask workers), or the defaults."""
    return resolve(ModelStore, name, ModelStoreSettings())


def model_registry(name: str | None = "default", *, room: str | None = None,
                   layout_name: str | None = "default") -> Registry:  # fmt: skip
    """The registry the ``ModelStore`` document configures (file-system store under the models root if none)."""
    from labpipe.blocks import layout

    return model_store(name).open(layout(layout_name), room=room)


__all__ = ["ModelStore", "model_registry", "model_store"]
