"""A table declaration killed half-way is completed by the next process (fault campaign, imaging population).

On PostgreSQL DataJoint declares a table in several statements: CREATE TABLE, then one COMMENT ON per column.
The comments carry the attribute types (``:<npy@blobs>:`` ...). A worker killed between them left
``BehaviorSession`` with bare ``json`` columns, and every later insert of its frame times failed with "Object of
type ndarray is not JSON serializable". Here a real child process is SIGKILLed at the first COMMENT ON of that
table, (or at the CREATE INDEX of its jobs table), and a fresh process must find the table whole: its codecs, its
comments, its indexes, and the population inserting.
"""

import subprocess
import sys

import numpy as np
import pytest
from labpipe.behavior.schema import tables as behavior_tables
from labpipe.db.connect import LabDatabase
from labpipe.ingest.run import ingest_share
from labpipe.ingest.simulate_science import simulate_science_share

DIES_AT_STATEMENT = """
import os, signal, sys
from pathlib import Path
from labpipe.behavior.schema import tables as behavior_tables
from labpipe.db.connect import LabDatabase
from labpipe.db.target import DatabaseTarget
from labpipe.ingest.schema import tables as ingest_tables

url, blobs, prefix, statement, table = sys.argv[1:]
db = LabDatabase(DatabaseTarget.from_url(url), Path(blobs), prefix=prefix)
ingest_tables(db)
query = db.connection.query

def dying(sql, *args, **kwargs):
    if sql.startswith(statement) and table in sql:
        os.kill(os.getpid(), signal.SIGKILL)  # as the fault campaign's kill landed
    return query(sql, *args, **kwargs)

db.connection.query = dying
behavior_tables(db)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "statement, table",
    [
        ("COMMENT ON COLUMN", '"_behavior_session"'),  # the defect: the table's types lost
        ("CREATE INDEX", '"~~behavior_session"'),  # its jobs table: no index, no comments (error_stack's <blob>)
    ],
)
def test_a_table_whose_declaration_was_killed_gets_its_attribute_types_back(lab_db, tmp_path, statement, table):
    from labpipe.calcium.simulate import RecordingSpec

    spec = RecordingSpec(frames=300, height=32, width=32, cells=3, seed=2)
    share = simulate_science_share(tmp_path / "share", 1, spec=spec, video=False)
    assert ingest_share(lab_db, share.root).status == "succeeded"
    child = subprocess.run(
        [sys.executable, "-c", DIES_AT_STATEMENT, lab_db.target.url, str(lab_db.blobs), lab_db.prefix]
        + [statement, table],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr  # killed mid-declaration, the table created without comments

    again = LabDatabase(lab_db.target, lab_db.blobs, prefix=lab_db.prefix)  # the rerun: a new process's view
    session = behavior_tables(again).BehaviorSession
    outcome = session.populate(make_kwargs={"share": str(share.root)}, suppress_errors=True)
    assert outcome.get("error_list", []) == []
    assert session.heading["imaging_frame_times"].codec.name == "npy"
    assert session.heading["bpod_file"].comment == "relative to the scan folder"
    frames = np.asarray(session.fetch1("imaging_frame_times"))
    assert frames.shape == (spec.frames,) and np.all(np.diff(frames) > 0)
    index = "idx_~~behavior_session_status_priority_scheduled_time"
    found = again.connection.query("SELECT 1 FROM pg_indexes WHERE indexname = %s", args=(index,)).fetchall()
    assert found and session.jobs.heading["error_stack"].codec.name == "blob"
