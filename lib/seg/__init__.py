"""Segmentation lifecycle (CryoMamba): cryo-ET tomograms segmented by nnU-Net v2, tile by tile.

Modules: ``mrc`` (validation, memory-mapped reading, aligned writing),
``simulate`` (synthetic tomograms with true labels), ``nnunet`` (paths, datasets,
planning, training, model folders), ``tiles`` (the sliding-window tiling and the
per-tile prediction), ``segment`` (a whole run: tiles fanned out, logits
accumulated, previews, cancellation), ``artifacts`` (mask.mrc/.nii.gz/.nrrd and
stats.json), ``memory`` (the memory estimate checked before a run).

nnU-Net, torch, mrcfile, nibabel and pynrrd are the ``seg`` extra; modules that
need them import them behind :func:`require`.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str) -> ModuleType:
    """Import an optional dependency of the segmentation lifecycle or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - the seg extra is installed here
        raise ImportError(
            f"labpipe's segmentation lifecycle needs {module!r}: install it with `pip install -e '.[seg]'` "
            f"(or `make install`)"
        ) from exc
