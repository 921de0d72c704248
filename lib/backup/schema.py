"""DataJoint tables of the backup lifecycle (schema ``<prefix>_backup``), declared per database.

``BackupRun`` records every backup with its sizes, checks and restore proof;
``DatabaseDump`` every dump and the archive that proved it; ``RetentionAction``
every retention move: where the verified copy lives (the "archive location" the
DSA-110 plan asks the products database to keep) and when the local copy went.
"""

from __future__ import annotations

from types import SimpleNamespace

from labpipe.db.connect import LabDatabase, datajoint_module

LIFECYCLE = "backup"


def _build(schema) -> SimpleNamespace:
    dj = datajoint_module()

    @schema
    class BackupRun(dj.Manual):
        """One backup run. Attributes: archive, sizes before/after compression and dedup, checks, proof."""

        definition = """
        run_id : char(32)
        ---
        started : datetime
        finished = null : datetime
        status : enum('running', 'succeeded', 'failed')
        repository : varchar(1023)
        archive = '' : varchar(255)
        original_bytes = 0 : int64          # files in the archive, before compression
        compressed_bytes = 0 : int64        # after compression
        deduplicated_bytes = 0 : int64      # what this archive added to the repository
        repository_bytes = 0 : int64        # whole repository on disk after the run
        nfiles = 0 : int64
        create_seconds = 0 : float64
        total_seconds = 0 : float64
        check_ok = null : bool
        proof_files = 0 : int32
        proof_ok = null : bool
        pruned = 0 : int32
        detail = '' : varchar(4000)
        """

        class Source(dj.Part):
            """One source root of the run and how its pull went."""

            definition = """
            -> master
            source : varchar(64)
            ---
            origin : varchar(1023)
            status : enum('pulled', 'failed')
            files = 0 : int64
            bytes = 0 : int64
            transferred_bytes = 0 : int64
            seconds = 0 : float64
            detail = '' : varchar(2000)
            """

    @schema
    class DatabaseDump(dj.Manual):
        """A dump in the dumps root. Attributes: which database, checksum, the archive that proved it."""

        definition = """
        dump_name : varchar(255)
        ---
        db_label : varchar(128)
        bytes : int64
        sha256 : char(64)
        created : datetime
        archive = null : varchar(255)       # first archive whose restore proof read this dump back
        deleted = null : datetime           # removed from the dumps root by dump retention
        """

    @schema
    class RetentionAction(dj.Manual):
        """One entry moved by retention: copied, verified on the remote, recorded, then (maybe) deleted."""

        definition = """
        action_id : char(32)
        ---
        root : varchar(32)
        path : varchar(1023)                # relative to the root
        policy : varchar(255)
        action : enum('archive', 'archive-delete')
        files : int64
        bytes : int64
        manifest_sha256 : char(64)          # over the sorted (path, size, sha256) of its files
        location = '' : varchar(1023)       # where the verified copy is (rclone remote:path)
        status : enum('copying', 'verified', 'deleted', 'failed', 'changed')
        started : datetime
        verified = null : datetime
        deleted = null : datetime
        detail = '' : varchar(2000)
        """

        class File(dj.Part):
            """One file of the entry, as it was verified."""

            definition = """
            -> master
            file_no : int32
            ---
            rel_path : varchar(1023)        # relative to the entry
            size : int64
            sha256 : char(64)
            """

    return SimpleNamespace(
        schema=schema, BackupRun=BackupRun, DatabaseDump=DatabaseDump, RetentionAction=RetentionAction
    )


def tables(db: LabDatabase) -> SimpleNamespace:
    """The backup tables on ``db`` (declared on first use)."""
    return db.tables(LIFECYCLE, _build)
