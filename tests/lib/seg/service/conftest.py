"""The segmentation service on loopback: a real uvicorn server in a thread, real files, tokens, the real flow.

``start_service`` serves a ``SegService`` on a free loopback port (uvicorn
binds port 0 and reports the port it got). Jobs run as flow runs of the real
``segment`` flow: a Prefect ``Runner`` (a thread of this process, each run a
subprocess, as a worker does) serves it as deployment ``segment/service-test``
on the session's Prefect test server, and ``PrefectJobRunner`` submits to it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from pathlib import Path

import httpx
import pytest
from labpipe.layout import Layout
from labpipe.seg import checksums
from labpipe.seg.service.auth import Keys, mint_token
from labpipe.seg.service.server import build_service, host_environment, uvicorn_config
from labpipe.seg.service.service import Environment
from labpipe.seg.service.settings import ServiceSettings
from labpipe.seg.simulate import simulate_tomogram, write_simulated

ROOT = Path(__file__).resolve().parents[4]
PART = 64 << 10  # the tests' smallest part size (the lab's is 8 MiB): small files in several parts


class NoRunner:
    """For tests of uploads and auth only: a job submitted here is a test bug."""

    name = "none"

    def submit(self, job_id, parameters):  # pragma: no cover - never called
        raise AssertionError("this test starts no job")

    status = cancel = submit


class LoopbackService:
    """One service process-in-a-thread; ``restart()`` stops it and serves a new one on the same data folder."""

    def __init__(self, settings: ServiceSettings, runner, environment: Environment, tls=(None, None)) -> None:
        self.settings, self.runner, self.environment, self.tls = settings, runner, environment, tls
        self.start()

    def start(self) -> None:
        import uvicorn

        self.service = build_service(self.settings, self.runner, self.environment)
        self.server = uvicorn.Server(uvicorn_config(self.service, "127.0.0.1", 0, *self.tls))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the service did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls[0] else 'http'}://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def token(self, user: str = "alice", scopes=("read", "submit"), ttl: int = 3600, **kw) -> str:
        return mint_token(Keys.from_file(self.settings.key_file), user, list(scopes), ttl, **kw)


def make_settings(root: Path, **overrides) -> ServiceSettings:
    return ServiceSettings(
        data=root / "data",
        key_file=root / "service.key",
        part_size_min=PART,
        free_disk_reserve_bytes=0,
        default_model="tiny-test",
        **overrides,
    )


@pytest.fixture
def start_service(tmp_path):
    """``start_service(runner=..., environment=..., tls=(cert, key), **settings)`` -> a running LoopbackService."""
    started = []

    def start(runner=None, environment=None, tls=(None, None), **overrides) -> LoopbackService:
        env = environment or Environment(models=lambda: {"tiny-test": {"name": "tiny-test"}})
        svc = LoopbackService(make_settings(tmp_path, **overrides), runner or NoRunner(), env, tls)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


@pytest.fixture
def tomogram_bytes(tmp_path) -> bytes:
    """A valid 48x40x48 float32 MRC (~370 KB: six parts of 64 KiB)."""
    path, _ = write_simulated(tmp_path / "upload.mrc", simulate_tomogram((48, 40, 48), seed=3))
    return path.read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def init(client: httpx.Client, data: bytes, part_size: int = PART, filename: str = "TS_01.mrc") -> httpx.Response:
    return client.post(
        "/v1/uploads/init", json={"filename": filename, "size": len(data), "sha256": sha(data), "part_size": part_size}
    )


def put_part(
    client: httpx.Client, upload_id: str, data: bytes, index: int, part_size: int = PART, checksum: str = "crc32c"
) -> httpx.Response:
    """PUT part ``index`` of ``data`` with its ``checksum`` (crc32c, as the client sends, or sha256)."""
    chunk = data[index * part_size : (index + 1) * part_size]
    headers = {checksums.HEADERS[checksum]: checksums.part_digest(checksum, chunk)}
    return client.put(f"/v1/uploads/{upload_id}/part/{index}", content=chunk, headers=headers)


def upload(client: httpx.Client, data: bytes, part_size: int = PART, filename: str = "TS_01.mrc") -> dict:
    """The whole protocol: init, the parts not held yet, complete; returns the completed upload."""
    view = init(client, data, part_size, filename).json()
    for index in sorted(set(range(view["parts_total"])) - set(view["parts_received"])):
        assert put_part(client, view["upload_id"], data, index, part_size).status_code == 200
    done = client.post(f"/v1/uploads/{view['upload_id']}/complete")
    assert done.status_code == 200, done.text
    return done.json()


# ---------------------------------------------------------------------------------------------- real jobs

DEPLOYMENT = "segment/service-test"


@pytest.fixture(scope="session")
def segment_deployment(labpipe_home):
    """The real segment flow served on the session's Prefect server (runs as subprocesses, like a worker's)."""
    from labpipe.deployments.platform import ensure_gpu_limit
    from labpipe.flows.segment import segment
    from prefect.client.orchestration import get_client
    from prefect.runner import Runner

    from tests.lib.seg.seg_model import trained_tiny_model

    trained_tiny_model(labpipe_home)
    with get_client(sync_client=True) as client:
        ensure_gpu_limit(client, 0)
    # loaded from the source tree as a worker does (python -m prefect.engine with the entrypoint), not pickled
    flow = segment.from_source(source=str(ROOT), entrypoint="flows/segment.py:segment")
    runner = Runner(name="seg-service-tests", query_seconds=0.5, pause_on_shutdown=False)
    runner.add_flow(flow, name="service-test")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(runner.start()), daemon=True)
    thread.start()
    yield DEPLOYMENT
    asyncio.run_coroutine_threadsafe(runner.astop(), loop).result(30)
    thread.join(30)


@pytest.fixture
def job_service(start_service, segment_deployment, labpipe_home):
    from labpipe.flows.segment import PrefectJobRunner

    roots = Layout.default(labpipe_home).ensure()
    return start_service(runner=PrefectJobRunner(segment_deployment), environment=host_environment(roots))
