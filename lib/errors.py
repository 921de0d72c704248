"""One error hierarchy for labpipe.

Every error names the input at fault and says what was expected or what to do,
so that a user reading a failed flow run or a CLI message can act on it.
"""

from __future__ import annotations


class LabpipeError(Exception):
    """Base class: ``subject`` is the input at fault, ``hint`` what to do about it."""

    def __init__(self, subject: object, problem: str, hint: str = "") -> None:
        self.subject = str(subject)
        self.problem = problem
        self.hint = hint
        message = f"{self.subject}: {problem}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __reduce__(self):
        # picklable with its fields (Dask ships a worker's exception to the client, Prefect persists it)
        return (self.__class__, (self.subject, self.problem, self.hint))


class ConfigError(LabpipeError):
    """A setting or block is missing or invalid."""


class DatabaseError(LabpipeError):
    """The lab database cannot be reached, started, dumped or restored."""


class InvalidInput(LabpipeError):
    """An input file or folder does not have the expected form or content."""


class ConflictError(LabpipeError):
    """A write would overwrite different data already in place."""


class ToolError(LabpipeError):
    """An external program (pg_dump, borg, rclone, ...) failed or is missing."""


class RunFailed(LabpipeError, RuntimeError):
    """A run finished with items that failed (the others were done); its summary lists them."""
