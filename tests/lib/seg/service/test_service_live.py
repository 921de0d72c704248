"""The WebSocket's live path without a model: previews written as a run writes them reach the client fast.

The job's run is a stand-in (``StandInRunner``: states set by the test)
because what is measured here is the service's side, from the run's publish
(``LiveFolder.publish_preview``, the call the segment flow makes) to the
client's receive; the real flow run is in test_service_jobs.py.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import zlib

import httpx
import numpy as np
from labpipe.seg.preview import Preview
from labpipe.seg.service.jobs import RunRef, RunStatus
from websockets.sync.client import connect

from tests.lib.seg.service.conftest import upload


class StandInRunner:
    """A run the test drives: submit records it, status reports what the test set."""

    name = "stand-in"

    def __init__(self) -> None:
        self.state = RunStatus("RUNNING", "Running")
        self.cancelled = []

    def submit(self, job_id, parameters):
        self.parameters = parameters
        return RunRef(f"run-{job_id}", f"segment-api-{job_id}")

    def status(self, run_id):
        return self.state

    def cancel(self, run_id):
        self.cancelled.append(run_id)
        self.state = RunStatus("CANCELLED", "Cancelled")


class Info:
    voxel_size_zyx = (20.0, 20.0, 20.0)
    origin_xyz = (0.0, 0.0, 0.0)


def _preview(done: int) -> Preview:
    labels = np.full((16, 32, 32), done % 3, np.uint8)
    return Preview(4, labels, labels == 0, done, 100)


def _connect(svc, token, job_id):
    url = svc.url.replace("http://", "ws://") + f"/v1/ws/jobs/{job_id}"
    return connect(url, additional_headers={"Authorization": f"Bearer {token}"}, max_size=None, open_timeout=30)


def _next(ws, kind: str) -> dict:
    while True:
        message = json.loads(ws.recv(timeout=30))
        if message["type"] == kind:
            return message


def test_previews_reach_the_client_within_a_second_and_only_the_newest(start_service, tomogram_bytes):
    runner = StandInRunner()
    svc = start_service(runner=runner, keepalive_s=0.5)
    token = svc.token()
    with svc.client(token) as client:
        record = upload(client, tomogram_bytes)
        job = client.post("/v1/jobs", json={"file_id": record["file_id"], "options": {"preview_every": 1}}).json()
    live = svc.service.jobs.live(job["job_id"])
    assert runner.parameters["publish_dir"] == str(live.path) and runner.parameters["run"] == f"api-{job['job_id']}"
    latencies = []
    with _connect(svc, token, job["job_id"]) as ws:
        assert _next(ws, "progress")["state"] == "running"
        assert _next(ws, "keepalive")["job_id"] == job["job_id"]  # nothing else to say for 0.5 s
        for done in range(1, 21):
            live.publish_preview(_preview(done), Info)
            message = _next(ws, "preview")
            latencies.append(time.time() - message["published_at"])
            labels = np.frombuffer(zlib.decompress(base64.b64decode(message["payload"])), message["dtype"])
            assert message["done"] == done and labels.reshape(message["shape"])[0, 0, 0] == done % 3
            assert message["scale"] == 4 and message["voxel_size_zyx"] == [80.0, 80.0, 80.0]
        for done in range(21, 31):  # the client reads nothing while ten previews are published
            live.publish_preview(_preview(done), Info)
        received = [_next(ws, "preview")["done"]]
        while received[-1] != 30:
            received.append(_next(ws, "preview")["done"])
        assert len(received) < 10, f"a lagging client gets the newest previews, not each one: {received}"
        live.publish_progress(30, 100)
        assert _next(ws, "progress")["done"] == 30
        runner.state = RunStatus("COMPLETED", "Completed")
        live.publish_result({"files": {}})
        end = _next(ws, "completed")
        assert set(end["artifacts"]) == {"mask.mrc", "mask.nii.gz", "mask.nrrd", "stats.json"}
    p95 = float(np.percentile(latencies, 95))
    print(json.dumps({"preview_latency_p95_s": round(p95, 4), "previews": len(latencies)}))
    assert p95 < 1.0, latencies


def test_websocket_refusals_and_cancel(start_service, tomogram_bytes):
    runner = StandInRunner()
    svc = start_service(runner=runner)
    token = svc.token()
    with svc.client(token) as client:
        record = upload(client, tomogram_bytes)
        job = client.post("/v1/jobs", json={"file_id": record["file_id"]}).json()
    for bad, code in [("nope", "unauthenticated"), (svc.token("bob"), "not_found")]:
        with _connect(svc, bad, job["job_id"]) as ws:
            refused = json.loads(ws.recv(timeout=30))
            assert refused["type"] == "error" and refused["code"] == code
    with svc.client(svc.token(scopes=["read"])) as reader:
        assert reader.delete(f"/v1/jobs/{job['job_id']}").status_code == 403
    with _connect(svc, token, job["job_id"]) as ws:
        _next(ws, "progress")
        with svc.client(token) as client:
            assert client.delete(f"/v1/jobs/{job['job_id']}").status_code == 202
        end = _next(ws, "error")
    assert end["state"] == "canceled" and end["code"] == "job_canceled" and runner.cancelled


def test_a_job_recorded_but_never_submitted_is_submitted_after_a_restart(start_service, tomogram_bytes):
    runner = StandInRunner()
    svc = start_service(runner=runner)
    token = svc.token()
    with svc.client(token) as client:
        job = client.post("/v1/jobs", json={"file_id": upload(client, tomogram_bytes)["file_id"]}).json()
    record = svc.service.jobs.load(job["job_id"])
    record.update(flow_run_id=None, flow_run_name=None, state="queued")  # as if the service died before submitting
    svc.service.jobs.save(record)
    runner.parameters = None
    svc.restart()
    deadline = time.monotonic() + 30
    while runner.parameters is None:  # recovery runs in the background at start
        assert time.monotonic() < deadline, "the unsubmitted job was not submitted after the restart"
        time.sleep(0.05)
    with svc.client(token) as client:
        again = client.get(f"/v1/jobs/{job['job_id']}").json()
    assert again["flow_run_id"] == f"run-{job['job_id']}" and again["state"] == "running"


def test_tls_when_given_a_certificate(start_service, tmp_path):
    from tests.lib.vms.test_access import make_certificates

    (tmp_path / "tls").mkdir()
    ca, cert, key = make_certificates(tmp_path / "tls")
    svc = start_service(tls=(cert, key))
    assert svc.url.startswith("https://")
    with httpx.Client(base_url=svc.url, verify=ssl.create_default_context(cafile=str(ca))) as client:
        answer = client.get("/v1/server/info", headers={"Authorization": f"Bearer {svc.token()}"})
    assert answer.status_code == 200 and answer.json()["user"] == "alice"
