"""Blocks of the backup lifecycle: borg repository, backup plan, rclone remote, retention, disk watch.

Each block *is* the lib model it configures (``labpipe.backup.settings``); the loaders below resolve a
document name to those settings (``labpipe.blocks.resolve``: only ``default`` may fall back to the
built-in defaults).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from labpipe.backup.settings import BackupPlan, BorgRepository, DiskWatchSettings, RcloneRemote, RetentionPolicies
from labpipe.blocks.resolve import resolve
from labpipe.config import get_settings
from labpipe.layout import Layout
from prefect.blocks.core import Block

if TYPE_CHECKING:
    from labpipe.backup.borg import Borg


class BackupRepository(Block, BorgRepository):
    """A borg repository: its location and its passphrase (a secret)."""

    _block_type_name = "labpipe borg repository"
    _block_type_slug = "labpipe-borg-repository"
    _description = "Where the backup host's borg repository is, and the passphrase of its key (kept secret)."
    _code_example = """
    from labpipe.blocks.backup import BackupRepository
    repo = BackupRepository.load("BLOCK_NAME")
    BackupRepository(repository="/backup/borg/lab", passphrase="...").save("default", overwrite=True)
    """


class NightlyBackup(Block, BackupPlan):
    """What is backed up: sources, excludes, compression, archive retention (keep_*), checks, dumps."""

    _block_type_name = "labpipe backup plan"
    _block_type_slug = "labpipe-backup-plan"
    _description = "Sources pulled from the main server, borg create options, prune rules, checks and dump hooks."
    _code_example = """
    from labpipe.blocks.backup import NightlyBackup
    plan = NightlyBackup.load("BLOCK_NAME")
    from labpipe.backup.settings import BackupSource
    NightlyBackup(sources=[BackupSource(name="share", path="backup@MAIN_SERVER:/datajoint-data/data")],
                    compression="auto,zstd,22").save("default", overwrite=True)
    """


class OffsiteRemote(Block, RcloneRemote):
    """The off-site archive: an rclone remote (type, path, options, secret options)."""

    _block_type_name = "labpipe rclone remote"
    _block_type_slug = "labpipe-rclone-remote"
    _description = "The rclone remote that archive folders, the borg repository and retention moves are copied to."
    _code_example = """
    from labpipe.blocks.backup import OffsiteRemote
    remote = OffsiteRemote.load("BLOCK_NAME")
    OffsiteRemote(type="s3", path="lab-archive/backup", options={"provider": "Minio", "endpoint": "http://..."},
                      secret_options={"access_key_id": "...", "secret_access_key": "..."}).save("default")
    """


class FolderRetention(Block, RetentionPolicies):
    """Per-directory retention policies; the default keeps everything (DSA-110's policy today)."""

    _block_type_name = "labpipe retention policies"
    _block_type_slug = "labpipe-retention-policies"
    _description = "How long each directory's entries stay, and whether they are archived, then deleted."
    _code_example = """
    from labpipe.blocks.backup import FolderRetention
    policies = FolderRetention.load("BLOCK_NAME")
    from labpipe.backup.settings import RetentionPolicy
    FolderRetention(policies=[RetentionPolicy(root="radio", folder="incoming", pattern="*.hdf5",
                                                     keep_days=7, action="archive-delete")]).save("default")
    """


class DiskWatch(Block, DiskWatchSettings):
    """Disk watch: roots and tmpfs to measure, incoming folders to count, thresholds, Prometheus port."""

    _block_type_name = "labpipe disk watch"
    _block_type_slug = "labpipe-disk-watch"
    _description = "Free space, tmpfs use and incoming counts, their alarm thresholds and the Prometheus exporter."
    _code_example = """
    from labpipe.blocks.backup import DiskWatch
    watch = DiskWatch.load("BLOCK_NAME")
    DiskWatch(metrics_port=9108).save("default", overwrite=True)
    """


def repository(name: str | None = "default") -> BorgRepository:
    """The ``BackupRepository`` document ``name``, or the built-in defaults (a repository under the backups root)."""
    return resolve(BackupRepository, name, BorgRepository())


def backup_plan(name: str | None = "default") -> BackupPlan:
    """The ``NightlyBackup`` document ``name``, or the built-in defaults (the ADAMACS pull set)."""
    return resolve(NightlyBackup, name, BackupPlan())


def rclone_remote(name: str | None = "default") -> RcloneRemote:
    """The ``OffsiteRemote`` document ``name``, or the built-in defaults (no remote)."""
    return resolve(OffsiteRemote, name, RcloneRemote())


def retention_policies(name: str | None = "default") -> RetentionPolicies:
    """The ``FolderRetention`` document ``name``, or the built-in defaults (keep everything)."""
    return resolve(FolderRetention, name, RetentionPolicies())


def diskwatch_settings(name: str | None = "default") -> DiskWatchSettings:
    """The ``DiskWatch`` document ``name``, or the built-in defaults (DSA-110's thresholds)."""
    return resolve(DiskWatch, name, DiskWatchSettings())


def borg_client(repository_name: str | None, roots: Layout) -> Borg:
    """borg on the repository of ``BackupRepository`` document ``repository_name``, state under ``roots``."""
    from labpipe.backup.borg import Borg

    return Borg(repository(repository_name), backups_root=roots.backups, home=get_settings().home)


__all__ = ["BackupRepository", "DiskWatch", "FolderRetention", "NightlyBackup", "OffsiteRemote", "backup_plan",
           "borg_client", "diskwatch_settings", "rclone_remote", "repository", "retention_policies"]  # fmt: skip
