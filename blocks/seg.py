"""The segmentation block: defaults of segmentation runs (model, step, mirroring, workers, previews)."""

from __future__ import annotations

from labpipe.blocks.resolve import resolve
from labpipe.seg.settings import SegmentationSettings
from prefect.blocks.core import Block


class SegmentationDefaults(Block, SegmentationSettings):
    """Defaults of the segment flow: model, sliding-window step, mirroring, Dask workers, device, previews."""

    _block_type_name = "labpipe segmentation"
    _block_type_slug = "labpipe-segmentation"
    _description = "Defaults of nnU-Net tomogram segmentation runs; a flow parameter given explicitly wins."
    _code_example = """
    from labpipe.blocks.seg import SegmentationDefaults
    defaults = SegmentationDefaults.load("BLOCK_NAME")
    print(defaults.model, defaults.step_size)
    """


def segmentation_defaults(name: str | None = "default") -> SegmentationSettings:
    """The ``SegmentationDefaults`` document ``name``, or the built-in defaults (``labpipe.blocks.resolve``)."""
    return resolve(SegmentationDefaults, name, SegmentationSettings())
