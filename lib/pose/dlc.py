"""DeepLabCut behind one door: the import guard, the process environment it needs, the device, the backbone weights.

Facts measured on the CPU development host (no network): DeepLabCut 3 training always
tries to download ImageNet backbone weights (timm / Hugging Face) unless it is given a
starting snapshot, and importing it writes matplotlib caches. ``deeplabcut()`` therefore
sets ``MPLCONFIGDIR`` to a writable folder if unset, and ``backbone_weights_cached`` tells a
caller whether the pretrained weights are on disk; when they are not, training starts from
a randomly initialised snapshot (``labpipe.pose.train``). On a GPU host with the weights
cached (``HF_HOME``), they are used.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path

from labpipe.errors import ConfigError
from labpipe.optional import require


def prepare_environment() -> None:
    """Environment DeepLabCut needs before import: a writable matplotlib cache, no display."""
    if not os.environ.get("MPLCONFIGDIR"):
        folder = Path(tempfile.gettempdir()) / f"labpipe-mpl-{os.getuid()}"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["MPLCONFIGDIR"] = str(folder)
    os.environ.setdefault("MPLBACKEND", "Agg")


@functools.cache
def deeplabcut():
    """The ``deeplabcut`` module (imported once: ~13 s on an idle 2-core host), or an ImportError saying what to do."""
    prepare_environment()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return require("deeplabcut", "pose", "pose estimation")


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version

    try:
        return package_version("deeplabcut")
    except PackageNotFoundError:
        return "not installed"


def resolve_device(requested: str | None = "auto") -> str:
    """``cuda`` / ``cpu`` / ``mps``: ``LABPIPE_DEVICE`` (set by ``labpipe up`` on GPU-less hosts) wins over "auto"."""
    requested = (requested or "auto").lower()
    if requested == "auto":
        requested = os.environ.get("LABPIPE_DEVICE", "auto").lower() or "auto"
    if requested != "auto":
        if requested.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("device", f"{requested} requested but torch sees no CUDA device", "use auto or cpu")
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def limit_cpu_threads(device: str, threads: int | None) -> None:
    """Cap torch's CPU threads (process-wide) when running on the CPU; GPUs are unaffected.

    On a busy CPU host, OpenMP threads spin against other processes: measured on 2 cores
    under load, a resnet18 step took 3.7 s with 1 thread and 18.6 s with 2.
    """
    if threads and device == "cpu":
        import torch

        torch.set_num_threads(threads)


def backbone_weights_cached(timm_name: str) -> bool:
    """True if timm's ImageNet weights for ``timm_name`` are in the local Hugging Face cache (no network asked)."""
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        repo = timm.models.get_pretrained_cfg(timm_name).hf_hub_id
    except Exception:  # unknown model name or libraries missing: not cached
        return False
    if not repo:
        return False
    return any(
        isinstance(try_to_load_from_cache(repo, name), str) for name in ("model.safetensors", "pytorch_model.bin")
    )
