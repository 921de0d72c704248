"""A real S3 endpoint on loopback (moto's server in a child process) and registries on both backends."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="session")
def s3_server():
    from labpipe.registry.s3server import LocalS3Server

    with LocalS3Server() as server:
        yield server


def s3_backend(server, bucket: str = "models"):
    from labpipe.registry import S3Backend

    return S3Backend(
        bucket,
        endpoint_url=server.endpoint_url,
        access_key_id="testing",
        secret_access_key="testing",
        prefix=f"t{uuid.uuid4().hex[:8]}",  # each test its own registry in the shared endpoint
        create_bucket=True,
    )


@pytest.fixture(params=["filesystem", "s3"])
def backend(request, tmp_path):
    from labpipe.registry import FilesystemBackend

    if request.param == "filesystem":
        return FilesystemBackend(tmp_path / "store")
    return s3_backend(request.getfixturevalue("s3_server"))


@pytest.fixture
def make_registry(backend, tmp_path):
    """Registries of one room on ``backend``, each with its own cache (one per simulated worker)."""
    from labpipe.registry import Registry

    def make(worker: str = "gpu@a", room: str = "lab") -> Registry:
        return Registry(backend, room, tmp_path / f"cache-{worker}", worker_id=worker, user="tester")

    return make


@pytest.fixture
def model_dir(tmp_path):
    """A small model folder: a checkpoint and its config."""

    def make(content: bytes = b"weights-1", name: str = "m1"):
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        (folder / "best.ckpt").write_bytes(content * 100)
        (folder / "training_config.json").write_text('{"lr": 0.001}')
        return folder

    return make
