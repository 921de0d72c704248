"""DataJoint tables of behaviour (``<prefix>_behavior``): Bpod trials, states and events on the imaging frames.

``BehaviorSession`` is imported per ingest ``Scan`` that holds a Bpod ``.mat`` file: the
file is read, checked against the session (animal, date), fitted to the Harp sync stream
of the same scan (``harp/Behavior_32.bin``), and every trial, state and event is placed on
the Harp clock with the imaging frame and the camera frame it falls in. A file that does
not belong is refused with an error naming it; the other scans go on.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from labpipe.behavior.sync import SyncWiring
from labpipe.db.connect import LabDatabase, datajoint_module
from labpipe.ingest.schema import tables as ingest_tables


def _build(schema, ingest: SimpleNamespace) -> SimpleNamespace:
    dj = datajoint_module()
    from labpipe.behavior import load

    Scan = ingest.Scan  # noqa: N806 - DataJoint resolves "-> Scan" from this scope

    @schema
    class BehaviorSession(dj.Imported):
        """A scan's Bpod session aligned to its Harp sync stream. Attributes: protocol, trials, clock fit."""

        definition = """
        -> Scan
        ---
        bpod_file : varchar(255)      # relative to the scan folder
        sync_file : varchar(255)
        protocol : varchar(64)
        bpod_subject : varchar(64)
        n_trials : int32
        clock_offset : float64        # harp = drift x bpod + offset (s)
        clock_drift : float64
        residual_ms : float32         # worst trial-start misfit
        imaging_frame_times : <npy@blobs>   # (frames,) frame starts on the harp clock (s)
        camera_frame_times : <npy@blobs>
        """

        key_source = Scan & (ingest.RawFile & "file_name LIKE '%%.mat'")

        class Trial(dj.Part):
            """One trial on the harp clock, and the imaging and camera frames it spans (-1: outside)."""

            definition = """
            -> master
            trial_id : int32
            ---
            trial_type : int32
            start_time : float64
            stop_time : float64
            start_frame : int32
            stop_frame : int32
            start_camera_frame : int32
            stop_camera_frame : int32
            """

        class State(dj.Part):
            """A state of the state machine visited in a trial."""

            definition = """
            -> master.Trial
            state : varchar(64)
            ---
            start_time : float64
            stop_time : float64
            start_frame : int32
            stop_frame : int32
            """

        class Event(dj.Part):
            """An input event (lick, timer) in a trial."""

            definition = """
            -> master.Trial
            event_no : int32
            ---
            event : varchar(64)
            time : float64
            frame : int32
            camera_frame : int32
            """

        def make(self, key, share: str, wiring: SyncWiring | None = None):
            loaded = load.load_scan(key, ingest, Path(share), wiring or SyncWiring())
            self.insert1(dict(key, **loaded.row))
            for part, rows in (
                (self.Trial, loaded.aligned.trials),
                (self.State, loaded.aligned.states),
                (self.Event, loaded.aligned.events),
            ):
                part.insert(dict(key, **row) for row in rows)

    return SimpleNamespace(schema=schema, ingest=ingest, BehaviorSession=BehaviorSession)


def tables(db: LabDatabase) -> SimpleNamespace:
    """The behaviour tables on ``db`` (declared on first use, after ingest's)."""
    ingest = ingest_tables(db)
    return db.tables("behavior", lambda schema: _build(schema, ingest))
