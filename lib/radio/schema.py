"""DataJoint tables of the radio streaming lifecycle (schema ``<prefix>_radio``), declared per database.

Group states::

    collecting --(all subbands)--------------------> pending --(claimed)--> in_progress --> completed
        |      --(timeout, policy convert)--------->    ^                        |     \\--> failed
        \\------(timeout, policy fail)----------------> failed                   |
                                                        \\--(worker dead or silent: recovered)

Paths are stored relative to the radio root (the tree moves between hosts).
"""

from __future__ import annotations

from types import SimpleNamespace

from labpipe.db import evolve
from labpipe.db.connect import LabDatabase, datajoint_module

STATES = ("collecting", "pending", "in_progress", "completed", "failed")


def _build(schema) -> SimpleNamespace:
    dj = datajoint_module()

    @schema
    class SubbandFile(dj.Manual):
        """A subband file seen in incoming/. Attributes: name, time in its name, subband, size, status."""

        definition = """
        file_name : varchar(255)           # name in incoming/
        ---
        file_time : datetime               # timestamp in the name
        subband : int16
        size : int64
        recorded : datetime
        status : enum('open', 'grouped', 'late', 'duplicate')
        group_id = null : varchar(19)
        """

    @schema
    class SubbandGroup(dj.Manual):
        """A group of subband files written together, and where its conversion stands.

        Attributes: group_id (ISO timestamp of its earliest file), state, the worker holding it and its
        heartbeat, the MS it became (kind science/calibrators) or the error and log that failed it.
        """

        definition = """
        group_id : varchar(19)             # YYYY-MM-DDTHH:MM:SS of the earliest file
        ---
        state : enum('collecting', 'pending', 'in_progress', 'completed', 'failed')
        n_files : int16
        missing = '' : varchar(64)         # comma-separated subbands absent when queued
        first_seen : datetime              # when its first file was recorded
        last_seen : datetime               # when its newest file was recorded
        queued = null : datetime
        incomplete = 0 : bool              # queued by the timeout with subbands missing
        attempts = 0 : int32
        worker = null : varchar(255)       # host:pid of the converting process
        claim = null : varchar(32)         # token of the attempt holding (or that completed) the group
        heartbeat = null : datetime
        started = null : datetime
        finished = null : datetime
        kind = null : varchar(16)          # science | calibrators
        calibrator = null : varchar(64)    # the transiting calibrator
        ms_path = null : varchar(1023)     # relative to the radio root
        flagged = '' : varchar(64)         # subbands flagged in the MS
        error = null : varchar(4000)
        log_path = null : varchar(1023)    # relative to the radio root
        seconds = null : float32           # conversion wall time
        """

        class Member(dj.Part):
            """The file holding one subband of the group."""

            definition = """
            -> master
            subband : int16
            ---
            -> SubbandFile
            """

    @schema
    class ConversionAttempt(dj.Manual):
        """Every attempt at converting a group, including those abandoned by a dead worker."""

        definition = """
        -> SubbandGroup
        attempt : int32
        ---
        worker : varchar(255)
        started : datetime
        finished = null : datetime
        outcome = null : varchar(16)       # completed | failed | abandoned
        detail = '' : varchar(4000)
        staging = '' : varchar(16)         # tmpfs | disk
        seconds = null : float32
        token = '' : varchar(32)           # the attempt's claim token (its staging folders are named by it)
        """

    for table in (SubbandGroup, ConversionAttempt):
        evolve.add_attributes(table, ADDED_ATTRIBUTES[table.__name__])
    return SimpleNamespace(
        schema=schema, SubbandGroup=SubbandGroup, SubbandFile=SubbandFile, ConversionAttempt=ConversionAttempt
    )


# attributes added after a release: a table declared by an older labpipe gains them when it is opened
ADDED_ATTRIBUTES = {
    "SubbandGroup": {"claim": "varchar(32) NULL"},
    "ConversionAttempt": {"token": "varchar(32) NOT NULL DEFAULT ''"},
}


def tables(db: LabDatabase) -> SimpleNamespace:
    """The radio streaming tables on ``db`` (declared on first use)."""
    return db.tables("radio", _build)
