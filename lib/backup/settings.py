"""What a backup user configures, as borgmatic's configuration file has it, split into blocks.

- ``BorgRepository``: where the repository is and its passphrase (a secret).
- ``BackupPlan``: sources, excludes, compression, retention of archives (keep_*), checks,
  restore proof and database dump hooks.
- ``RcloneRemote``: the off-site archive remote.
- ``RetentionPolicies``: per-directory policies for the data roots (DSA-110); default: keep everything.
- ``DiskWatchSettings``: what the disk watch measures and its alarm thresholds.

The blocks in ``labpipe.blocks.backup`` *are* these models; flows pass them to lib code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from labpipe.errors import ConfigError
from labpipe.layout import ROOT_DESCRIPTIONS, Layout
from pydantic import BaseModel, Field, SecretStr, field_validator

GB = 1e9
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REMOTE_PATH = re.compile(r"^(?:[^/:@\s]+@)?[^/:\s]+:")  # user@host:/path or host:path (rsync's remote syntax)


def is_remote_path(path: str) -> bool:
    """Whether ``path`` names another host (``user@host:/path``), as rsync reads it."""
    return bool(_REMOTE_PATH.match(path)) and not Path(path).exists()


class BorgRepository(BaseModel):
    """A borg repository and how to open it."""

    repository: str = Field(
        "", description="Repository: a local path or ssh://user@host:port/path. Empty: <backups root>/borg."
    )
    passphrase: SecretStr | None = Field(
        None,
        description="Passphrase of the repository key. Empty: kept in $LABPIPE_HOME/secrets/borg-passphrase "
        "(created with a new repository; copy it somewhere safe, without it the backups cannot be read).",
    )
    encryption: Literal[
        "repokey-blake2", "repokey", "keyfile-blake2", "keyfile", "authenticated-blake2", "authenticated", "none"
    ] = Field("repokey-blake2", description="Encryption mode used when labpipe creates the repository (borg init).")
    base_dir: str = Field(
        "", description="BORG_BASE_DIR: borg's cache, security and keyfile folder. Empty: $LABPIPE_HOME/borg."
    )
    lock_wait: int = Field(10, ge=0, description="Seconds to wait for the repository lock before failing.")
    remote_path: str = Field("", description="Path of borg on the repository host (ssh repositories only).")
    binary: str = Field("borg", description="The borg program (a name on PATH or an absolute path).")
    storage_quota: str = Field(
        "", description="borg init --storage-quota for a new repository, e.g. '2T'. Empty: none."
    )


class DumpSettings(BaseModel):
    """Database dump hooks: which databases are dumped into the dumps root, and how long dumps stay there."""

    lab_database: bool = Field(True, description="Dump the lab database (pg_dump -Fc or mysqldump).")
    prefect_database: bool = Field(
        True, description="Dump the Prefect server's database (SQLite online backup, or pg_dump for PostgreSQL)."
    )
    sqlite_databases: list[str] = Field(
        default_factory=list,
        description="Other state databases (SQLite files or glob patterns, e.g. /data/contimg/state/*.sqlite3).",
    )
    keep_days: int = Field(14, ge=1, description="Dumps older than this are removed from the dumps root ...")
    keep_last: int = Field(3, ge=1, description="... but the newest this many of each database always stay.")


class BackupSource(BaseModel):
    """One source root pulled into the staging copy and backed up."""

    name: str = Field(description="Short name; the folder in the staging copy and in every archive.")
    path: str = Field(description="A local folder, or user@MAIN_SERVER:/path pulled over ssh by rsync.")
    excludes: list[str] = Field(default_factory=list, description="rsync exclude patterns for this source.")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"source name {value!r}: use letters, digits, '.', '_' or '-'")
        return value


class BackupPlan(BaseModel):
    """What is backed up and how: sources, excludes, compression, archive retention, checks, proof, dumps."""

    sources: list[BackupSource] = Field(
        default_factory=list, description="Source roots. Empty: the layout's share, blobs and dumps roots."
    )
    excludes: list[str] = Field(
        default_factory=lambda: ["sh:**/.*.part", "sh:**/*.tmp", "sh:**/__pycache__"],
        description="borg exclude patterns (borg help patterns), applied to every source.",
    )
    exclude_caches: bool = Field(True, description="Skip folders holding a CACHEDIR.TAG file.")
    exclude_if_present: list[str] = Field(
        default_factory=lambda: [".nobackup"], description="Skip folders that hold a file of one of these names."
    )
    compression: str = Field("zstd,22", description="borg compression, e.g. zstd,22, auto,zstd,22, zstd,3, lz4.")
    archive_prefix: str = Field("labpipe", description="Archives are named <prefix>-<YYYY-MM-DDTHH:MM:SS>.")
    checkpoint_interval: int = Field(1800, ge=1, description="Seconds between borg checkpoints during a create.")
    keep_within: str = Field("", description="borg prune --keep-within, e.g. 2d. Empty: not used.")
    keep_daily: int = Field(7, ge=0, description="Daily archives kept by prune.")
    keep_weekly: int = Field(4, ge=0, description="Weekly archives kept by prune.")
    keep_monthly: int = Field(6, ge=0, description="Monthly archives kept by prune.")
    keep_yearly: int = Field(0, ge=0, description="Yearly archives kept by prune.")
    check_repository: bool = Field(True, description="borg check --repository-only after every backup.")
    check_max_duration: int = Field(
        0, ge=0, description="Seconds for a partial repository check that resumes next time (0: full check)."
    )
    check_last_archives: int = Field(1, ge=0, description="Archive metadata check of the newest N archives.")
    proof_sample_files: int = Field(20, ge=0, description="Files extracted and compared after every backup.")
    proof_max_bytes: int = Field(
        2_000_000_000, ge=0, description="Cap on the sampled files' total size (this run's dumps are always proven)."
    )
    rsync_args: list[str] = Field(default_factory=list, description="Extra rsync options (e.g. --bwlimit=50m).")
    dumps: DumpSettings = Field(default_factory=DumpSettings, description="Database dump hooks.")

    def keep_args(self) -> list[str]:
        args = [f"--keep-within={self.keep_within}"] if self.keep_within else []
        for unit in ("daily", "weekly", "monthly", "yearly"):
            if count := getattr(self, f"keep_{unit}"):
                args.append(f"--keep-{unit}={count}")
        if not args:
            raise ConfigError("backup plan", "no keep_* rule set: prune would delete every archive", "set keep_daily")
        return args

    def resolved_sources(self, layout: Layout) -> list[BackupSource]:
        """The configured sources, or the layout's share, blobs and dumps (the ADAMACS pull set)."""
        if self.sources:
            names = [s.name for s in self.sources]
            if len(set(names)) != len(names):
                raise ConfigError("backup plan", f"duplicate source names in {names}", "give each source its own name")
            return list(self.sources)
        return [BackupSource(name=name, path=str(getattr(layout, name))) for name in ("share", "blobs", "dumps")]


class RcloneRemote(BaseModel):
    """The off-site archive: an rclone remote and the folders synced to it."""

    type: str = Field("", description="rclone backend (local, s3, sftp, b2, drive, ...). Empty: no archive remote.")
    path: str = Field("", description="Bucket/prefix or folder on the remote.")
    options: dict[str, str] = Field(default_factory=dict, description="Backend options (provider, endpoint, region).")
    secret_options: dict[str, SecretStr] = Field(
        default_factory=dict, description="Secret backend options (access_key_id, secret_access_key, pass)."
    )
    archive_folders: list[str] = Field(
        default_factory=list, description="Local folders synced to <path>/<folder name>. Empty: <radio root>/archive."
    )
    include_repository: bool = Field(True, description="Also sync the borg repository (an off-site copy).")
    check_download: bool = Field(
        False, description="rclone check --download: compare content when the backends share no hash type."
    )
    transfers: int = Field(4, ge=1, description="Parallel rclone transfers.")
    bwlimit: str = Field("", description="rclone --bwlimit, e.g. 20M. Empty: unlimited.")
    keep_previous_days: float = Field(
        30.0,
        ge=0,
        description="Off-site files a sync replaced or deleted are kept this long in <path>/.labpipe-previous/"
        "<time>/ (removed only by a later run whose own copy was verified).",
    )

    @property
    def configured(self) -> bool:
        return bool(self.type)


RetentionAction = Literal["keep", "archive", "archive-delete"]


class RetentionPolicy(BaseModel):
    """How long the entries (files or folders) of one directory stay, and what happens after."""

    root: str = Field("radio", description="A layout root (radio, share, blobs, dumps, ...).")
    folder: str = Field(description="Folder under the root whose entries the policy governs, e.g. ms/science.")
    pattern: str = Field("*", description="Which entries of the folder (glob), e.g. *.hdf5 or 20??-??-??.")
    keep_days: float | None = Field(
        None, ge=0, description="Age (newest file inside) after which to act. Empty: never."
    )
    action: RetentionAction = Field(
        "keep", description="keep; archive (copy to the remote and verify); archive-delete (then delete locally)."
    )
    note: str = Field("", description="Why (shown in reports).")

    @field_validator("root")
    @classmethod
    def _known_root(cls, value: str) -> str:
        if value not in ROOT_DESCRIPTIONS:
            raise ValueError(f"root {value!r} is not a layout root; expected one of {sorted(ROOT_DESCRIPTIONS)}")
        return value

    @field_validator("folder")
    @classmethod
    def _relative(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError(f"folder {value!r} must be relative to its root, without '..'")
        return value


def _seed_policies() -> list[RetentionPolicy]:
    """DSA-110's table today: INDEFINITE retention everywhere (no automatic deletion)."""
    table = [
        ("incoming", "Raw UVH5"),
        ("ms/science", "Science MS"),
        ("ms/calibrators", "Calibrator MS and tables (24 h BP, 1 h G)"),
        ("ms/failed", "Failed MS: manual review"),
        ("images/single", "Single-epoch images"),
        ("images/mosaics", "Mosaics"),
        ("images/qa", "QA plots"),
    ]
    return [RetentionPolicy(root="radio", folder=folder, note=note) for folder, note in table]


class RetentionPolicies(BaseModel):
    """Per-directory retention; the default is the seed's policy today: keep everything."""

    policies: list[RetentionPolicy] = Field(default_factory=_seed_policies, description="One policy per directory.")
    remote_folder: str = Field("retention", description="Folder under the remote's path that archived entries go to.")


class DiskThreshold(BaseModel):
    """Alarm levels for one root (a layout root name) or an absolute path (a tmpfs)."""

    target: str = Field(description="A layout root name (scratch, radio, ...) or an absolute path (/dev/shm).")
    warning_free_gb: float | None = Field(None, description="Warning when free space falls below (GB).")
    critical_free_gb: float | None = Field(None, description="Critical when free space falls below (GB).")
    warning_used_percent: float | None = Field(None, description="Warning when use exceeds (percent).")
    critical_used_percent: float | None = Field(None, description="Critical when use exceeds (percent).")


def _seed_thresholds() -> list[DiskThreshold]:
    """DSA-110's monitoring: /scratch free < 200 GB warning, < 100 GB critical; /dev/shm use > 95 % critical."""
    return [
        DiskThreshold(target="scratch", warning_free_gb=200, critical_free_gb=100),
        DiskThreshold(target="radio", warning_free_gb=200, critical_free_gb=100),
        DiskThreshold(target="/dev/shm", critical_used_percent=95),
    ]


class DiskWatchSettings(BaseModel):
    """What the disk watch measures, where it serves gauges, and when it raises alarms."""

    roots: list[str] = Field(
        default_factory=lambda: list(ROOT_DESCRIPTIONS), description="Layout roots to measure (default: all)."
    )
    tmpfs: list[str] = Field(default_factory=lambda: ["/dev/shm"], description="tmpfs mounts to measure.")
    incoming: list[str] = Field(
        default_factory=lambda: ["radio:incoming", "staging:"],
        description="Folders whose file counts are reported, as <root>:<folder under it>.",
    )
    thresholds: list[DiskThreshold] = Field(default_factory=_seed_thresholds, description="Alarm thresholds.")
    metrics_address: str = Field("127.0.0.1", description="Address the Prometheus exporter binds to.")
    metrics_port: int = Field(9108, ge=1, le=65535, description="Port of the Prometheus exporter.")
    growth_window_hours: float = Field(24.0, gt=0, description="Window over which the growth rate is measured.")
    history_days: float = Field(14.0, gt=0, description="How long samples are kept for the growth rate.")
