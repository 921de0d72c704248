"""DataJoint tables of the ingest lifecycle, declared per database (activated late).

``tables(db)`` declares the schema ``<prefix>_ingest`` on ``db`` and returns the
table classes, so tests and deployments choose the database. Paths in rows are
relative to the share root, which moves between hosts (``make_kwargs`` carries it).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from labpipe.db.connect import LabDatabase, datajoint_module

SETUPS = ("mini2p1", "mini2p2", "bench2p1", "aux1", "aux2", "behavior1", "behavior2")
MODALITIES = ("imaging", "video", "mocap", "aux", "other")


def _build(schema) -> SimpleNamespace:
    dj = datajoint_module()
    from labpipe.ingest import mocap

    @schema
    class Setup(dj.Lookup):
        """An acquisition setup. Attributes: setup."""

        definition = """
        setup : varchar(16)
        """
        contents = [(name,) for name in SETUPS]

    @schema
    class LabUser(dj.Manual):
        """A share user folder. Attributes: username."""

        definition = """
        username : varchar(32)
        """

    @schema
    class Subject(dj.Manual):
        """An animal. Attributes: animal_id."""

        definition = """
        animal_id : varchar(32)
        """

    @schema
    class Session(dj.Manual):
        """A recording session folder. Attributes: session_id, session_date, initials, folder."""

        definition = """
        session_id : char(8)
        ---
        -> LabUser
        -> Subject
        session_date : date
        initials : varchar(3)
        folder : varchar(255)        # relative to the share root
        """

    @schema
    class Scan(dj.Manual):
        """A scan folder of a session. Attributes: scan_id, folder, setup."""

        definition = """
        -> Session
        scan_id : char(8)
        ---
        -> [nullable] Setup
        folder : varchar(255)        # relative to the share root
        """

    @schema
    class RawFile(dj.Manual):
        """A raw file of a scan. Attributes: file_name, size, checksum, modality."""

        definition = f"""
        -> Scan
        file_name : varchar(255)     # relative to the scan folder
        ---
        size : int64
        checksum : char(64)          # sha256
        modality : enum({", ".join(repr(m) for m in MODALITIES)})
        """

    @schema
    class ImagingTask(dj.Manual):
        """A .tif stack to process (labpipe.calcium: suite2p on the cpu pool). Attributes: max_shift_px (unused)."""

        definition = """
        -> RawFile
        ---
        max_shift_px = 8 : int32     # largest rigid shift searched
        """

    @schema
    class MocapTask(dj.Manual):
        """Motion-capture parsing of a Motive .csv export (CPU pool)."""

        definition = """
        -> RawFile
        """

    @schema
    class PoseEstimationTask(dj.Manual):
        """Pose estimation of a video with a named model (GPU pool). Attributes: model_name."""

        definition = """
        -> RawFile
        ---
        model_name = null : varchar(64)   # chosen explicitly; null until assigned
        """

    @schema
    class IngestRun(dj.Manual):
        """One ingest run and its outcome; a run with failed steps never ends 'succeeded'."""

        definition = """
        run_id : char(32)
        ---
        share_root : varchar(1023)
        started : datetime
        finished = null : datetime
        status : enum('running', 'succeeded', 'failed')
        sessions_inserted = 0 : int32
        sessions_skipped = 0 : int32
        rejected = 0 : int32
        failures = 0 : int32
        """

        class SessionOutcome(dj.Part):
            """What happened to one accepted session folder in this run."""

            definition = """
            -> master
            session_folder : varchar(255)
            ---
            session_id : char(8)
            outcome : enum('inserted', 'updated', 'skipped', 'failed')
            detail = '' : varchar(2000)
            """

        class Failure(dj.Part):
            """A rejected folder or a failed step of this run."""

            definition = """
            -> master
            failure_no : int32
            ---
            path : varchar(1023)
            stage : enum('consolidate', 'parse', 'insert', 'task')
            reason : varchar(2000)
            """

    @schema
    class MocapRecording(dj.Computed):
        """Marker trajectories parsed from a Motive .csv export."""

        definition = """
        -> MocapTask
        ---
        n_frames : int32
        frame_rate : float32
        markers : varchar(2000)      # comma-separated marker names
        trajectories : <npy@blobs>   # (frames, markers, 3) metres, NaN where occluded
        missing_fraction : float32
        """

        def make(self, key, share: str):
            recording = mocap.read_motive_csv(_file_path(RawFile, key, share))
            self.insert1(dict(key, **recording.row()))

    return SimpleNamespace(
        schema=schema,
        Setup=Setup,
        LabUser=LabUser,
        Subject=Subject,
        Session=Session,
        Scan=Scan,
        RawFile=RawFile,
        ImagingTask=ImagingTask,
        MocapTask=MocapTask,
        PoseEstimationTask=PoseEstimationTask,
        IngestRun=IngestRun,
        MocapRecording=MocapRecording,
    )


def _file_path(raw_file_table, key: dict, share: str) -> Path:
    scan_folder = (raw_file_table.proj() * _scan_of(raw_file_table) & key).fetch1("folder")
    return Path(share) / scan_folder / key["file_name"]


def _scan_of(raw_file_table):
    return raw_file_table.parents(as_objects=True)[0]


def tables(db: LabDatabase) -> SimpleNamespace:
    """The ingest tables on ``db`` (declared on first use)."""
    return db.tables("ingest", _build)


POPULATIONS = {"mocap": ("MocapRecording",)}  # imaging: labpipe.calcium.populate
