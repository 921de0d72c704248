"""Jobs through the service: real flow runs of the segment flow on the session's Prefect server, watched live.

Upload -> job (a flow run of ``segment/service-test``, tagged ``seg-service``)
-> the service restarted while it runs -> WebSocket progress, previews and
completion -> signed downloads of mask.mrc / .nii.gz / .nrrd / stats.json,
aligned with the input; a cancel that stops the run; a run that fails with
its error in the envelope. CPU only (no GPU here): the tiny test model.
"""

from __future__ import annotations

import base64
import json
import time
import zlib
from uuid import UUID

import mrcfile
import numpy as np
import pytest
from labpipe.layout import Layout
from labpipe.seg.simulate import simulate_tomogram, write_simulated
from prefect.client.orchestration import get_client
from websockets.sync.client import connect

from tests.lib.seg.service.conftest import upload

pytestmark = pytest.mark.slow
DEADLINE_S = 600  # a flow run starts a Python process and a Dask cluster: slow on a loaded 2-core host


def _watch(svc, token: str, job_id: str, until=lambda message: False) -> list[dict]:
    """Every message of the job's WebSocket until it closes (or ``until(message)``)."""
    url = svc.url.replace("http://", "ws://") + f"/v1/ws/jobs/{job_id}"
    messages = []
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None, open_timeout=30) as ws:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            try:
                message = json.loads(ws.recv(timeout=max(1.0, deadline - time.monotonic())))
            except Exception:  # closed by the server after the last message
                break
            messages.append(message)
            if until(message):
                break
    return messages


def _flow_run(run_id: str):
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id))


def _tomogram(tmp_path, shape, seed=7) -> tuple[bytes, object]:
    path, _ = write_simulated(tmp_path / "job.mrc", simulate_tomogram(shape, seed=seed), origin_xyz=(3.0, 5.0, 7.0))
    return path.read_bytes(), path


def test_happy_path_upload_job_restart_previews_completion_signed_downloads(job_service, tmp_path, labpipe_home):
    svc = job_service
    data, source = _tomogram(tmp_path, (36, 44, 56))
    token = svc.token("alice")
    with svc.client(token) as client:
        record = upload(client, data)
        options = {"mirroring": False, "preview_every": 0.5, "preview_factor": 4}
        created = client.post("/v1/jobs", json={"file_id": record["file_id"], "model": "tiny-test", "options": options})
        assert created.status_code == 201, created.text
        job = created.json()
    assert job["state"] == "queued" and job["flow_run_id"] and "tomogram" not in job
    run = _flow_run(job["flow_run_id"])
    assert "seg-service" in run.tags and run.parameters["publish_dir"].startswith(str(svc.settings.data))

    svc.restart()  # the job was recorded "queued": after the restart it is read from its flow run again

    messages = _watch(svc, token, job["job_id"])
    kinds = [m["type"] for m in messages]
    assert kinds[-1] == "completed", messages[-3:]
    assert "progress" in kinds and all(m["job_id"] == job["job_id"] for m in messages)
    states = [m["state"] for m in messages if m["type"] == "progress"]
    assert states[-1] in ("running", "previewing", "completed")
    previews = [m for m in messages if m["type"] == "preview"]
    assert previews, kinds
    last = previews[-1]
    labels = np.frombuffer(zlib.decompress(base64.b64decode(last["payload"])), last["dtype"]).reshape(last["shape"])
    assert last["scale"] == 4 and list(labels.shape) == [9, 11, 14] and last["voxel_size_zyx"] == [80.0, 80.0, 80.0]
    assert last["origin_xyz"] == [3.0, 5.0, 7.0] and 0 < last["done"] <= last["total"]

    artifacts = messages[-1]["artifacts"]
    assert set(artifacts) == {"mask.mrc", "mask.nii.gz", "mask.nrrd", "stats.json"}
    with svc.client() as anonymous:  # signed links need no token
        for name, link in artifacts.items():
            answer = anonymous.get(link["url"])
            assert answer.status_code == 200, (name, answer.text)
            assert len(answer.content) == link["bytes"]
            (tmp_path / name).write_bytes(answer.content)
    with mrcfile.open(source, permissive=True) as src, mrcfile.open(tmp_path / "mask.mrc") as mask:
        assert mask.data.shape == src.data.shape == (36, 44, 56)
        assert mask.voxel_size.tolist() == src.voxel_size.tolist()
        assert [float(mask.header.origin[a]) for a in "xyz"] == [3.0, 5.0, 7.0]
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["shape_zyx"] == [36, 44, 56] and stats["labels"]
    import nibabel
    import nrrd

    assert nibabel.load(tmp_path / "mask.nii.gz").shape == (56, 44, 36)  # XYZ
    assert nrrd.read(str(tmp_path / "mask.nrrd"))[0].size == 36 * 44 * 56
    # the mask the client downloaded is the flow's, aligned voxel for voxel
    roots = Layout.default(labpipe_home)
    assert (tmp_path / "mask.mrc").read_bytes() == (roots.artifacts / f"api-{job['job_id']}" / "mask.mrc").read_bytes()

    with svc.client(token) as client:
        done = client.get(f"/v1/jobs/{job['job_id']}").json()
        assert done["state"] == "completed" and done["progress"]["done"] == done["progress"]["total"] > 0
        assert [j["job_id"] for j in client.get("/v1/jobs").json()["jobs"]] == [job["job_id"]]
        finished = client.delete(f"/v1/jobs/{job['job_id']}")
        assert finished.status_code == 409 and finished.json()["code"] == "job_finished"
    with svc.client(svc.token("bob")) as bob:
        assert bob.get(f"/v1/jobs/{job['job_id']}").status_code == 404
        assert bob.get("/v1/jobs").json()["jobs"] == []
    refused = _watch(svc, svc.token("bob"), job["job_id"])
    assert refused[0]["type"] == "error" and refused[0]["code"] == "not_found"
    again = _watch(svc, token, job["job_id"])  # a finished job answers at once: progress, then completed
    assert [m["type"] for m in again][-1] == "completed"


def test_cancel_stops_the_run_and_leaves_no_artifacts(job_service, tmp_path, labpipe_home):
    svc = job_service
    data, _ = _tomogram(tmp_path, (64, 96, 96), seed=11)
    token = svc.token("alice")
    with svc.client(token) as client:
        record = upload(client, data)
        body = {"file_id": record["file_id"], "model": "tiny-test", "options": {"mirroring": True, "step_size": 0.5}}
        job = client.post("/v1/jobs", json=body).json()
        seen = _watch(svc, token, job["job_id"], until=lambda m: m["type"] == "progress" and m["done"] > 0)
        assert seen[-1]["type"] == "progress" and seen[-1]["done"] > 0, seen[-3:]
        cancelled = client.delete(f"/v1/jobs/{job['job_id']}")
        assert cancelled.status_code == 202, cancelled.text
    end = _watch(svc, token, job["job_id"])
    assert end[-1]["type"] == "error" and end[-1]["state"] == "canceled" and end[-1]["code"] == "job_canceled"
    deadline = time.monotonic() + DEADLINE_S
    while not (run := _flow_run(job["flow_run_id"])).state.is_final():
        assert time.monotonic() < deadline, run.state
        time.sleep(0.5)
    assert run.state.is_cancelled(), run.state
    assert not (Layout.default(labpipe_home).artifacts / f"api-{job['job_id']}").exists()


def test_a_failing_run_reports_its_error(job_service, tmp_path):
    svc = job_service
    folder = tmp_path / "server-tomograms"
    folder.mkdir()
    path, _ = write_simulated(folder / "zeros.mrc", simulate_tomogram((16, 16, 16), seed=1))
    with mrcfile.open(path, "r+") as mrc:
        mrc.data[:] = 0  # every voxel zero: refused by the run ("nothing to segment")
    token = svc.token("alice", paths=[str(folder)])
    with svc.client(token) as client:
        outside = client.post("/v1/jobs", json={"server_path": "/etc/hostname"})
        assert outside.status_code == 403 and outside.json()["code"] == "forbidden"
        job = client.post("/v1/jobs", json={"server_path": str(path), "model": "tiny-test"})
        assert job.status_code == 201, job.text
    end = _watch(svc, token, job.json()["job_id"])
    assert end[-1]["type"] == "error" and end[-1]["state"] == "failed", end[-1]
    assert end[-1]["code"] == "invalid_input" and "zero" in end[-1]["message"], end[-1]


def test_a_job_in_full_precision_runs_and_records_it(job_service, tmp_path, labpipe_home):
    """options.fp16 = false reaches the flow run (a parameter) and the run (its provenance in stats.json)."""
    svc = job_service
    data, _ = _tomogram(tmp_path, (32, 48, 48), seed=13)
    token = svc.token("alice")
    with svc.client(token) as client:
        record = upload(client, data)
        wrong = {"file_id": record["file_id"], "model": "tiny-test", "options": {"fp16": "no"}}
        refused = client.post("/v1/jobs", json=wrong)
        assert refused.status_code == 400 and "options.fp16" in refused.json()["message"]
        options = {"fp16": False, "mirroring": False, "preview_every": 0}
        job = client.post("/v1/jobs", json={"file_id": record["file_id"], "model": "tiny-test", "options": options})
        assert job.status_code == 201, job.text
    end = _watch(svc, token, job.json()["job_id"])
    assert end[-1]["type"] == "completed", end[-1]
    assert _flow_run(job.json()["flow_run_id"]).parameters["fp16"] is False
    stats = json.loads(
        (Layout.default(labpipe_home).artifacts / f"api-{job.json()['job_id']}" / "stats.json").read_text()
    )
    assert stats["fp16"] is False
