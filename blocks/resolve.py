"""Resolving configuration: a block document by name, or the built-in defaults, once per flow run.

Every lifecycle's loader (beside its block, e.g. ``labpipe.blocks.seg.segmentation_defaults``) calls
``resolve``. The rule is the same everywhere:

- a name given (``default`` included) loads that block document from the Prefect server;
- only ``default`` may fall back to the built-in defaults, and only when there is no such document or no
  server (a notebook on a laptop, a CLI with ``LABPIPE_OFFLINE=1``); in a flow or task run the fallback is
  logged at warning level with the home folder it uses, so a notebook never quietly starts an empty lab
  elsewhere (a command outside a run logs it at info level: its own errors stay two lines);
- any other name that does not load (a typo in the UI, a document that no longer validates) fails,
  naming the block type and the name.

What is returned is the lib settings model (a plain pydantic model, picklable for Dask workers), never
the block: flows resolve once and pass settings to their tasks.
"""

from __future__ import annotations

import logging
import os
from typing import TypeVar

from labpipe.config import get_settings
from labpipe.errors import ConfigError
from pydantic import BaseModel

S = TypeVar("S", bound=BaseModel)

DEFAULT = "default"
OFFLINE_ENV = "LABPIPE_OFFLINE"

log = logging.getLogger("labpipe.blocks")


def offline() -> bool:
    """True when ``LABPIPE_OFFLINE`` asks not to contact a Prefect server (built-in defaults only)."""
    return os.environ.get(OFFLINE_ENV, "").lower() in {"1", "true", "yes"}


def as_settings(value: BaseModel, settings_cls: type[S]) -> S:
    """The lib settings model of a loaded block (its fields, without the block's machinery)."""
    if type(value) is settings_cls:
        return value.model_copy()
    return settings_cls.model_validate({name: getattr(value, name) for name in settings_cls.model_fields})


def _missing_document(exc: Exception) -> bool:
    """Prefect's error for a block document or type that is not on the server."""
    return isinstance(exc, ValueError) and "Unable to find block document" in str(exc)


def _unreachable(exc: Exception) -> bool:
    import httpx

    return isinstance(exc, httpx.TransportError | ConnectionError | OSError)


def _in_a_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def resolve(block_cls: type, name: str | None, builtin: S) -> S:
    """The settings of block document ``name`` of ``block_cls``, or ``builtin`` (see the module's rule).

    ``builtin`` is the lib settings model with the defaults of this host; its type is the type returned.
    Raises ``ConfigError`` naming the block when a non-default name does not load, or when the default
    document exists but does not validate.
    """
    settings_cls = type(builtin)
    kind = getattr(block_cls, "_block_type_name", block_cls.__name__)
    if not name:
        return builtin
    if offline():
        if name == DEFAULT:
            return builtin
        raise ConfigError(f"block {kind!r} named {name!r}", f"cannot be loaded with {OFFLINE_ENV} set",
                          f"unset {OFFLINE_ENV} to load it from the Prefect server, or use {DEFAULT!r}")  # fmt: skip
    try:
        # _sync: Prefect's load returns a coroutine wherever an event loop runs (a Jupyter kernel: the analysis
        # notebook failed with "'coroutine' object has no attribute 'url'"); resolving is always synchronous
        loaded = block_cls.load(name, _sync=True)
    except Exception as exc:
        if name == DEFAULT and (_missing_document(exc) or _unreachable(exc)):
            why = "no Prefect server answers" if _unreachable(exc) else "no such block document was saved"
            # in a run (a notebook calling a flow) say it loudly: its data goes under this home; a command
            # outside a run (the CLI without a server) says it only with --debug-level logging
            level = logging.WARNING if _in_a_run() else logging.INFO
            log.log(level, "%s %r: %s; using the built-in defaults (labpipe home %s)", kind, name, why,
                    get_settings().home)  # fmt: skip
            return builtin
        subject = f"block {kind!r} named {name!r}"
        if _missing_document(exc):
            problem, hint = "no such block document on the Prefect server", "check the name, or run `labpipe up`"
        elif _unreachable(exc):
            problem, hint = (
                f"the Prefect server did not answer ({exc})",
                "start it (`labpipe up`), check PREFECT_API_URL",
            )
        else:
            problem, hint = f"does not load: {exc}", "fix it in the Prefect UI or with `labpipe config apply`"
        raise ConfigError(subject, problem, hint) from exc
    return as_settings(loaded, settings_cls)
