"""Calcium-imaging blocks: how suite2p, denoising and spike inference run, and where PyRAT answers.

Each block *is* the lib settings model it configures (``labpipe.calcium.settings``,
``labpipe.records.settings``); the loaders beside them resolve a block name once per flow run
(``labpipe.blocks.resolve``) and hand the flows plain settings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labpipe.blocks.resolve import resolve
from labpipe.calcium.settings import DenoiseSettings, SpikeSettings, Suite2pSettings
from labpipe.records.settings import PyratSettings, RSpaceSettings
from prefect.blocks.core import Block

if TYPE_CHECKING:
    from labpipe.calcium.schema import CalciumContext
    from labpipe.layout import Layout


class Suite2pProcessing(Block, Suite2pSettings):
    """How the cpu pool's imaging population runs suite2p on a plane (registration to OASIS)."""

    _block_type_name = "labpipe suite2p processing"
    _block_type_slug = "labpipe-suite2p-processing"
    _description = (
        "suite2p settings of the imaging population: indicator decay, soma diameter, frame rate when the TIFF has "
        "no ScanImage header, non-rigid registration, detection bins (bounded memory), neuropil coefficient."
    )
    _code_example = """
    from labpipe.blocks.imaging import Suite2pProcessing
    settings = Suite2pProcessing.load("BLOCK_NAME")
    print(settings.tau, settings.diameter)
    """


class StackDenoising(Block, DenoiseSettings):
    """How the gpu pool's optional denoise population trains and applies Noise2Void to a stack."""

    _block_type_name = "labpipe stack denoising"
    _block_type_slug = "labpipe-stack-denoising"
    _description = (
        "Noise2Void (self-supervised) denoising before suite2p, for stacks with a DenoiseTask: training frames, "
        "steps, patch size, U-Net size, device."
    )
    _code_example = """
    from labpipe.blocks.imaging import StackDenoising
    settings = StackDenoising.load("BLOCK_NAME")
    print(settings.steps, settings.device)
    """


class SpikeInference(Block, SpikeSettings):
    """How the gpu pool's spike population trains its CASCADE-style network on simulated truth."""

    _block_type_name = "labpipe spike inference"
    _block_type_slug = "labpipe-spike-inference"
    _description = (
        "CASCADE-style spike inference from dF/F: window, simulated training traces, epochs, batch size, device."
    )
    _code_example = """
    from labpipe.blocks.imaging import SpikeInference
    settings = SpikeInference.load("BLOCK_NAME")
    print(settings.window, settings.epochs)
    """


class PyratConnection(Block, PyratSettings):
    """The lab's PyRAT instance and the API tokens labpipe reads animal records with."""

    _block_type_name = "labpipe pyrat connection"
    _block_type_slug = "labpipe-pyrat-connection"
    _description = "PyRAT (animal facility records): instance URL, client and user API tokens, which animals to read."
    _code_example = """
    from labpipe.blocks.imaging import PyratConnection
    pyrat = PyratConnection.load("BLOCK_NAME")
    print(pyrat.url)
    """


class RSpaceNotebook(Block, RSpaceSettings):
    """The lab's RSpace server and which notebook entry each user's ingest summaries are appended to."""

    _block_type_name = "labpipe rspace notebook"
    _block_type_slug = "labpipe-rspace-notebook"
    _description = "RSpace (electronic lab notebook): server URL, API key, and share username -> document to append to."
    _code_example = """
    from labpipe.blocks.imaging import RSpaceNotebook
    notebook = RSpaceNotebook.load("BLOCK_NAME")
    print(notebook.url, notebook.entries)
    """


def suite2p_settings(name: str | None = "default") -> Suite2pSettings:
    """The ``Suite2pProcessing`` document ``name``, or the built-in defaults."""
    return resolve(Suite2pProcessing, name, Suite2pSettings())


def denoise_settings(name: str | None = "default") -> DenoiseSettings:
    """The ``StackDenoising`` document ``name``, or the built-in defaults."""
    return resolve(StackDenoising, name, DenoiseSettings())


def spike_settings(name: str | None = "default") -> SpikeSettings:
    """The ``SpikeInference`` document ``name``, or the built-in defaults."""
    return resolve(SpikeInference, name, SpikeSettings())


def calcium_context(
    roots: Layout, suite2p: str | None = "default", denoise: str | None = "default", spikes: str | None = "default"
) -> CalciumContext:
    """What a calcium worker needs: the share, its scratch folder and the three resolved settings."""
    from labpipe.calcium.schema import CalciumContext

    return CalciumContext(
        share=roots.share,
        scratch=roots.scratch,
        suite2p=suite2p_settings(suite2p),
        denoise=denoise_settings(denoise),
        spikes=spike_settings(spikes),
    )


def pyrat_settings(name: str | None = "default") -> PyratSettings | None:
    """The ``PyratConnection`` document ``name``; None when ``default`` is not configured (no PyRAT in this lab).

    PyRAT has no built-in default (an instance URL and tokens are the lab's), so a missing ``default``
    document means "not configured"; any other name that does not load fails as ``resolve`` says.
    """
    unconfigured = PyratSettings.model_construct(url="", client_token=None, user_token=None)
    settings = resolve(PyratConnection, name, unconfigured)
    return settings if settings.url else None


def rspace_settings(name: str | None = "default") -> RSpaceSettings | None:
    """The ``RSpaceNotebook`` document ``name``; None when ``default`` is not configured (no RSpace in this lab)."""
    unconfigured = RSpaceSettings.model_construct(url="", api_key=None, entries={})
    settings = resolve(RSpaceNotebook, name, unconfigured)
    return settings if settings.url else None


__all__ = [
    "PyratConnection",
    "RSpaceNotebook",
    "rspace_settings",
    "SpikeInference",
    "StackDenoising",
    "Suite2pProcessing",
    "calcium_context",
    "denoise_settings",
    "pyrat_settings",
    "spike_settings",
    "suite2p_settings",
]
