"""Segmentation lifecycle (CryoMamba): cryo-ET tomograms segmented by nnU-Net v2, tile by tile.

Modules: ``mrc`` (validation, memory-mapped reading, aligned writing),
``simulate`` (synthetic tomograms with true labels), ``nnunet`` (paths, datasets,
planning, training, model folders), ``tiles`` (the sliding-window tiling and the
per-tile prediction), ``segment`` (a whole run: tiles fanned out, logits
accumulated, previews, cancellation), ``artifacts`` (mask.mrc/.nii.gz/.nrrd and
stats.json), ``memory`` (the memory estimate checked before a run).

nnU-Net, torch, mrcfile, nibabel and pynrrd are the ``seg`` extra; modules that
need them import them behind :func:`require` (``labpipe.optional``).
"""

from __future__ import annotations

from types import ModuleType

from labpipe import optional


def require(module: str) -> ModuleType:
    """Import an optional dependency of the segmentation lifecycle (the ``seg`` extra)."""
    return optional.require(module, "seg", "segmentation")
