"""Past the lab's hosts: a radio group's conversion and a segmentation fan out over Dask workers that arrive as
SLURM jobs (``DaskSettings.slurm``, dask-jobqueue), on a one-node SLURM of Debian's munged, slurmctld and slurmd.

The cluster is ``labpipe.lab.slurm.LabSlurm`` on this machine's loopback (the folder's simulated lab is not brought
up: no test here asks for it). Every worker is a SLURM job: each reports its ``SLURM_JOB_ID``, squeue lists those
jobs running on the node, every task of the step ran on one of them, and the products equal the local ones. The
``radio-convert-files`` flow gets the same workers from a saved ``DaskCluster`` block with ``slurm`` settings. The
lab's own one-node SLURM (main's namespace, the lab's TLS) is checked in test_lab.py.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from labpipe.compute import DaskSettings, SlurmSettings, dask_client
from labpipe.errors import ConfigError
from labpipe.lab.simulate import run_root
from labpipe.lab.slurm import PARTITION, LabSlurm, missing_slurm
from labpipe.procs import pid_alive

from tests.e2e.lab.support import PREFIX, session_tiny_model

WHY_NOT = missing_slurm()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]

RADIO_START = dt.datetime(2025, 10, 13, 13, 28, 3)


@pytest.fixture(scope="module")
def slurm():
    """The one-node SLURM; this process is its submit host (``SLURM_CONF``). Torn down with nothing left."""
    cluster = LabSlurm(run_root() / f"labpipe-slurm-{PREFIX}", name=f"labpipe-{PREFIX}")
    before = os.environ.get("SLURM_CONF")
    try:
        cluster.brought_up = cluster.up()
        cluster.worker_pids = []
        print(f"one-node SLURM up in {cluster.brought_up} s")
        os.environ.update(cluster.env())
        yield cluster
        pids = cluster._ours() + cluster.worker_pids
        result = cluster.down()
        assert result["stopped"] == ["slurmd", "slurmctld", "munged"], result
        assert not cluster.root.exists()
        alive = [pid for pid in pids if pid_alive(pid)]
        assert not alive, f"still running after down: {alive}"
        assert not cluster._ours()
    finally:
        cluster.down()  # after a clean down this finds nothing; after a failure it removes everything
        os.environ.pop("SLURM_CONF", None) if before is None else os.environ.update(SLURM_CONF=before)


def _on_slurm(slurm, **extra) -> DaskSettings:
    logs = slurm.root / "jobs"
    logs.mkdir(exist_ok=True)
    settings = SlurmSettings(
        queue=PARTITION, cores=1, memory="2GiB", walltime="00:20:00", jobs=2, scheduler_host="127.0.0.1",
        log_directory=str(logs), arrival_timeout_s=120, **extra,
    )  # fmt: skip
    return DaskSettings(slurm=settings)


def _slurm_workers(client, slurm) -> dict[str, str]:
    """Worker address -> the SLURM job it runs in (from inside the worker), checked against squeue."""
    jobs = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
    slurm.worker_pids += list(client.run(os.getpid).values())
    assert jobs and all(jobs.values()), f"a Dask worker outside SLURM: {jobs}"
    running = {j["id"]: j for j in slurm.jobs()}
    for job in jobs.values():
        assert running[job]["state"] == "RUNNING" and running[job]["name"] == "labpipe-dask", running
        assert running[job]["node"] == slurm.node
    return jobs


def _table(path):
    from casacore.tables import table

    return table(str(path), ack=False)


def test_an_unknown_partition_is_named(slurm):
    refused = pytest.raises(ConfigError, match=r"DaskSettings\.slurm\.queue: SLURM has no partition 'gpu'")
    with refused as caught, dask_client(DaskSettings(slurm=SlurmSettings(queue="gpu"))):
        pass
    assert PARTITION in caught.value.hint
    assert not slurm.jobs(), "nothing was submitted"


def test_a_radio_group_converts_on_slurm_jobs_as_it_does_locally(slurm, tmp_path):
    from distributed import get_task_stream
    from labpipe.radio.convert import ConvertSettings, convert_group
    from labpipe.radio.simulate import simulate_group

    group = simulate_group(tmp_path / "incoming", RADIO_START, n_antennas=4, missing_subbands=(3,), seed=9)
    files = list(group.files.values())
    tmpfs = Path("/dev/shm") / f"labpipe-slurm-{uuid.uuid4().hex[:8]}"
    settings = ConvertSettings(tmpfs_root=tmpfs, fsync=False)
    try:
        local = convert_group(files, tmp_path / "local.ms", settings=settings)
        asked = time.monotonic()
        with dask_client(_on_slurm(slurm)) as client:
            client.wait_for_workers(2, timeout=120)
            print(f"radio: 2 SLURM jobs' Dask workers joined {time.monotonic() - asked:.1f} s after the step asked")
            workers = _slurm_workers(client, slurm)
            with get_task_stream(client) as stream:
                on_slurm = convert_group(files, tmp_path / "slurm.ms", settings=settings, client=client)
    finally:
        shutil.rmtree(tmpfs, ignore_errors=True)
    ran_on = {task["worker"] for task in stream.data}
    assert ran_on and ran_on <= set(workers), f"tasks ran on {ran_on}, SLURM workers {workers}"
    print(f"radio: {len(stream.data)} tasks on SLURM jobs {sorted(set(workers.values()))}")
    for column in ("DATA", "FLAG", "UVW"):
        np.testing.assert_array_equal(_table(on_slurm.ms_path).getcol(column), _table(local.ms_path).getcol(column))
    assert {j["id"] for j in slurm.finished_jobs()} >= set(workers.values()), "the jobs ended with the step"


def test_a_segmentation_runs_on_slurm_jobs_as_it_does_locally(slurm, labpipe_home, tmp_path):
    import mrcfile
    from distributed import get_task_stream
    from labpipe.layout import Layout
    from labpipe.seg.segment import SegmentationJob, segment_tomogram
    from labpipe.seg.simulate import simulate_tomogram, write_simulated

    model = session_tiny_model(labpipe_home)
    layout = Layout.default(labpipe_home).ensure()
    tomogram = layout.tomograms / "slurm.mrc"
    write_simulated(tomogram, simulate_tomogram((36, 40, 48), voxel_size=20.0, seed=31))

    def job(run: str) -> SegmentationJob:
        return SegmentationJob(tomogram, model.name, run=run, mirroring=False, preview_every=0, device="cpu")

    with dask_client(DaskSettings(n_workers=1)) as client:
        local = segment_tomogram(job("slurm-local"), layout, client=client, threads_per_task=1)
    asked = time.monotonic()
    with dask_client(_on_slurm(slurm)) as client:
        client.wait_for_workers(2, timeout=120)
        print(f"segmentation: 2 SLURM jobs' Dask workers joined {time.monotonic() - asked:.1f} s after the step asked")
        workers = _slurm_workers(client, slurm)
        with get_task_stream(client) as stream:
            on_slurm = segment_tomogram(job("slurm-jobs"), layout, client=client, threads_per_task=1)
    ran_on = {task["worker"] for task in stream.data}
    assert ran_on and ran_on <= set(workers), f"tasks ran on {ran_on}, SLURM workers {workers}"
    print(f"segmentation: {on_slurm.tiles} windows, tasks per SLURM worker {sorted(ran_on)}")
    assert on_slurm.tiles == local.tiles
    masks = [mrcfile.read(Path(r.folder) / "mask.mrc") for r in (local, on_slurm)]
    np.testing.assert_array_equal(masks[1], masks[0])
    assert on_slurm.stats["labels"] == local.stats["labels"]


def test_the_convert_files_flow_gets_slurm_workers_from_its_dask_block(slurm, tmp_path):
    from labpipe.blocks import DaskCluster
    from labpipe.blocks.radio import RadioStreaming
    from labpipe.flows.radio import radio_convert_files
    from labpipe.procs import wait_until
    from labpipe.radio.convert import ConvertSettings, convert_group
    from labpipe.radio.simulate import simulate_group

    name = f"slurm-{uuid.uuid4().hex[:8]}"
    DaskCluster(**_on_slurm(slurm).model_dump()).save(name)
    tmpfs = Path("/dev/shm") / f"labpipe-slurm-{uuid.uuid4().hex[:8]}"
    RadioStreaming(tmpfs_root=tmpfs, fsync=False, min_file_age_s=0).save(name)
    sim = simulate_group(tmp_path / "sim", RADIO_START, n_antennas=3, n_times=2, missing_subbands=range(8, 16))
    files = [str(p) for p in sim.files.values()]
    before = {j["id"] for j in slurm.finished_jobs()}
    try:
        result = radio_convert_files(files, str(tmp_path / "flow.ms"), radio_block=name, use_dask=True, dask_block=name)
        in_threads = ConvertSettings(tmpfs_root=tmpfs)
        local = convert_group(list(sim.files.values()), tmp_path / "local.ms", settings=in_threads)
    finally:
        shutil.rmtree(tmpfs, ignore_errors=True)
    ended = wait_until(lambda: [j for j in slurm.finished_jobs() if j["id"] not in before and j["id"]], 30)
    assert ended and len(ended) == 2 and {j["name"] for j in ended} == {"labpipe-dask"}, ended
    assert result["subbands_flagged"] == list(range(8, 16))
    np.testing.assert_array_equal(_table(tmp_path / "flow.ms").getcol("DATA"), _table(local.ms_path).getcol("DATA"))
