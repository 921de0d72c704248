"""Optional dependencies: one way to import a package a role's extra installs, or say how to get it.

A host installs only its role's extras (docs/install.md), so a lifecycle's heavy packages (torch, suite2p,
PyBDSF, ...) are imported where they are used, through ``require``. When one is missing the error names the
package, what needed it and the extra that installs it, and is both a ``LabpipeError`` (the CLI reports it
as ``error: ... hint: ...``) and an ``ImportError`` (code that probes for a package keeps working).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from labpipe.errors import LabpipeError


class MissingDependency(LabpipeError, ImportError):
    """An optional package is not installed (or does not import)."""


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` (dotted names allowed) or raise ``MissingDependency`` naming ``extra`` and ``purpose``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            module, f"{purpose} needs it and it does not import ({exc})", f"pip install 'labpipe[{extra}]'"
        ) from exc
