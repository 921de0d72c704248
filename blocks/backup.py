"""Blocks of the backup lifecycle: borg repository, backup plan, rclone remote, retention, disk watch.

Each block *is* the lib model it configures (``labpipe.backup.settings``).
Flows load the ``default`` document of each and fall back to the model's
defaults (a repository under the backups root, the ADAMACS pull set, no
archive remote, keep-everything retention, the DSA-110 disk thresholds).
"""

from __future__ import annotations

from labpipe.backup.settings import BackupPlan, BorgRepository, DiskWatchSettings, RcloneRemote, RetentionPolicies
from prefect.blocks.core import Block


class BorgRepositoryBlock(Block, BorgRepository):
    """A borg repository: its location and its passphrase (a secret)."""

    _block_type_name = "labpipe borg repository"
    _block_type_slug = "labpipe-borg-repository"
    _description = "Where the backup host's borg repository is, and the passphrase of its key (kept secret)."
    _code_example = """
    from labpipe.blocks.backup import BorgRepositoryBlock
    repo = BorgRepositoryBlock.load("BLOCK_NAME")
    BorgRepositoryBlock(repository="/backup/borg/lab", passphrase="...").save("default", overwrite=True)
    """


class BackupPlanBlock(Block, BackupPlan):
    """What is backed up: sources, excludes, compression, archive retention (keep_*), checks, dumps."""

    _block_type_name = "labpipe backup plan"
    _block_type_slug = "labpipe-backup-plan"
    _description = "Sources pulled from the main server, borg create options, prune rules, checks and dump hooks."
    _code_example = """
    from labpipe.blocks.backup import BackupPlanBlock
    plan = BackupPlanBlock.load("BLOCK_NAME")
    from labpipe.backup.settings import BackupSource
    BackupPlanBlock(sources=[BackupSource(name="share", path="backup@MAIN_SERVER:/datajoint-data/data")],
                    compression="auto,zstd,22").save("default", overwrite=True)
    """


class RcloneRemoteBlock(Block, RcloneRemote):
    """The off-site archive: an rclone remote (type, path, options, secret options)."""

    _block_type_name = "labpipe rclone remote"
    _block_type_slug = "labpipe-rclone-remote"
    _description = "The rclone remote that archive folders, the borg repository and retention moves are copied to."
    _code_example = """
    from labpipe.blocks.backup import RcloneRemoteBlock
    remote = RcloneRemoteBlock.load("BLOCK_NAME")
    RcloneRemoteBlock(type="s3", path="lab-archive/backup", options={"provider": "Minio", "endpoint": "http://..."},
                      secret_options={"access_key_id": "...", "secret_access_key": "..."}).save("default")
    """


class RetentionPoliciesBlock(Block, RetentionPolicies):
    """Per-directory retention policies; the default keeps everything (DSA-110's policy today)."""

    _block_type_name = "labpipe retention policies"
    _block_type_slug = "labpipe-retention-policies"
    _description = "How long each directory's entries stay, and whether they are archived, then deleted."
    _code_example = """
    from labpipe.blocks.backup import RetentionPoliciesBlock
    policies = RetentionPoliciesBlock.load("BLOCK_NAME")
    from labpipe.backup.settings import RetentionPolicy
    RetentionPoliciesBlock(policies=[RetentionPolicy(root="radio", folder="incoming", pattern="*.hdf5",
                                                     keep_days=7, action="archive-delete")]).save("default")
    """


class DiskWatchBlock(Block, DiskWatchSettings):
    """Disk watch: roots and tmpfs to measure, incoming folders to count, thresholds, Prometheus port."""

    _block_type_name = "labpipe disk watch"
    _block_type_slug = "labpipe-disk-watch"
    _description = "Free space, tmpfs use and incoming counts, their alarm thresholds and the Prometheus exporter."
    _code_example = """
    from labpipe.blocks.backup import DiskWatchBlock
    watch = DiskWatchBlock.load("BLOCK_NAME")
    DiskWatchBlock(metrics_port=9108).save("default", overwrite=True)
    """


__all__ = ["BackupPlanBlock", "BorgRepositoryBlock", "DiskWatchBlock", "RcloneRemoteBlock", "RetentionPoliciesBlock"]
