"""Typed backup failures, each naming the repository, path or source at fault and what to do."""

from __future__ import annotations

from labpipe.errors import ConfigError, ConflictError, InvalidInput, ToolError


class SourceUnavailable(InvalidInput):
    """A source root is missing or its host cannot be reached; the other sources are still backed up."""


class WrongPassphrase(ConfigError):
    """borg could not open the repository key with the configured passphrase."""


class RepositoryMissing(ConfigError):
    """There is no borg repository at the configured location."""


class RepositoryLocked(ConflictError):
    """The repository is locked by a running borg process or by one on another host."""


class RepositoryCorrupt(ToolError):
    """borg check (or a read) found damaged data in the repository."""


class DiskFull(ToolError):
    """A destination ran out of space (the repository, the staging copy or a restore target)."""


class ArchiveMismatch(ToolError):
    """Restored or archived files differ from their source."""


class RepositoryReplaced(ConfigError):
    """The repository at a known location has another id than the one labpipe recorded (another disk there)."""
