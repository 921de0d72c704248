"""The radio streaming flows as real Prefect runs (test server), configured through saved blocks."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path

import pytest
from labpipe.blocks import LabDatabase, StorageLayout
from labpipe.blocks.radio import RadioStreaming
from labpipe.flows.radio import radio_convert, radio_convert_files, radio_stream
from labpipe.layout import Layout
from labpipe.radio import lag
from labpipe.radio.naming import group_id, subband_file_name
from labpipe.radio.schema import tables
from labpipe.radio.simulate import Source, simulate_group
from labpipe.radio.tree import RadioTree
from prefect.client.orchestration import get_client

START = dt.datetime(2025, 10, 13, 13, 28, 3)


@pytest.fixture
def blocks(lab_db, tmp_path):
    name = f"t-{uuid.uuid4().hex[:8]}"
    roots = Layout.default(tmp_path).model_dump()
    roots["blobs"] = lab_db.blobs
    StorageLayout(**roots).save(name)
    LabDatabase(url=lab_db.target.url, schema_prefix=lab_db.prefix).save(name)
    tmpfs = Path("/dev/shm") / f"labpipe-test-{uuid.uuid4().hex[:8]}"
    RadioStreaming(tmpfs_root=tmpfs, fsync=False, min_file_age_s=0).save(name)
    yield name, RadioTree(Layout(**roots).radio).ensure()
    shutil.rmtree(tmpfs, ignore_errors=True)


def _converted_event(group: str):
    import time

    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    wanted = EventFilter(
        event=EventNameFilter(name=["labpipe.radio.group.converted"]),
        resource=EventResourceFilter(id=[f"labpipe.radio.group.{group}"]),
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=wanted, limit=1).events
        if events:
            return events[0]
        time.sleep(0.5)
    pytest.fail(f"no labpipe.radio.group.converted event for {group}")


def _artifact(key: str) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])), limit=1)
    return found[0].data if found else ""


@pytest.mark.slow
def test_stream_then_convert_with_a_flagged_and_a_failed_group(blocks, lab_db, tmp_path):
    name, tree = blocks
    sim = simulate_group(tmp_path / "sim", START, n_antennas=3, n_times=4, catalog=[Source("s", 230.0, 55.0, 2.0)])
    starts = [START + dt.timedelta(seconds=309 * k) for k in range(3)]
    for k, start in enumerate(starts):
        for sb, path in sim.files.items():
            target = tree.incoming / subband_file_name(start, sb)
            if k == 2:
                target.write_bytes(b"garbage, not HDF5")
            else:
                shutil.copy(path, target)
    (tree.incoming / subband_file_name(starts[1], 2)).write_bytes(b"truncated")

    summary = radio_stream(layout_block=name, db_block=name, radio_block=name)
    assert summary["new_files"] == 48 and len(summary["queued"]) == 3
    assert "radio stream: 48 new files" in _artifact("radio-stream")

    with pytest.raises(RuntimeError, match=group_id(starts[2])):
        radio_convert(use_dask=False, layout_block=name, db_block=name, radio_block=name)
    t = tables(lab_db)
    states = dict(zip(*t.SubbandGroup.to_arrays("group_id", "state"), strict=True))
    assert states == {group_id(starts[0]): "completed", group_id(starts[1]): "completed", group_id(starts[2]): "failed"}
    assert (t.SubbandGroup & {"group_id": group_id(starts[1])}).fetch1("flagged") == "2"
    assert tree.ms_path("science", group_id(starts[0])).is_dir()
    assert "no readable subband file" in tree.failed_log(group_id(starts[2])).read_text()
    text = _artifact("radio-convert")
    assert "2 groups converted, 1 failed" in text and "data:image/png;base64" in text

    # what the deployment triggers match (deployments/prefect.yaml): the event, the kind label, the relative MS
    converted = _converted_event(group_id(starts[0]))
    assert converted.resource["labpipe.radio.kind"] == "science"
    assert (tree.root / converted.payload["ms_path"]) == tree.ms_path("science", group_id(starts[0]))
    lags = {x.group_id: x for x in lag.stage_lags(lab_db)}
    assert lags[group_id(starts[0])].arrival_to_ms >= 0 and lags[group_id(starts[0])].ms_to_image is None


def test_convert_files_by_hand(blocks, tmp_path):
    name, _ = blocks
    sim = simulate_group(tmp_path / "sim", START, n_antennas=3, n_times=2, catalog=[], missing_subbands=range(4, 16))
    out = tmp_path / "hand" / "one.ms"
    result = radio_convert_files([str(p) for p in sim.files.values()], str(out), radio_block=name)
    assert result["subbands_flagged"] == list(range(4, 16)) and out.is_dir()
