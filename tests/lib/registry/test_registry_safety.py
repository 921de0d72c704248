"""Issue 13 item 6: a model on the store is never unpullable (changing checkpoint, republish, gc race, If-Match).

Each test drives the real store (a folder, or moto's S3 server on loopback) and injects the fault at the one
moment it matters, by wrapping the backend (as ``test_registry._LostAnswers`` does): the trainer saving a new
checkpoint while the publish uploads, a store copy that differs from what its metadata claims, a ``gc`` that
runs between a publisher's checks and its manifest write, a store that ignores ``If-Match``.
"""

from __future__ import annotations

import pytest
from labpipe.errors import ConfigError, ConflictError
from labpipe.files import sha256_file


class _Hooked:
    """A store that runs ``hook`` once, just before the first call of ``method`` for which ``when`` is true."""

    def __init__(self, backend, method: str, hook, when=lambda *args: True) -> None:
        self._backend, self._method, self._hook, self._when = backend, method, hook, when
        self.fired = False

    def __getattr__(self, name):
        real = getattr(self._backend, name)
        if name != self._method:
            return real

        def call(*args, **kwargs):
            if not self.fired and self._when(*args):
                self.fired = True
                self._hook()
            return real(*args, **kwargs)

        return call


def _pullable(make_registry, entry, worker: str = "gpu@fresh") -> None:
    """A worker that never saw the model pulls it and gets exactly the published bytes."""
    model = make_registry(worker).resolve(entry.id)
    for name, expected in entry.files.items():
        assert sha256_file(model.path / name) == expected.sha256, name


def test_a_checkpoint_changing_during_publish_never_publishes_bytes_that_fail_pulls(
    backend, make_registry, tmp_path, model_dir
):
    from labpipe.registry import Registry

    folder = model_dir()
    checkpoint = folder / "best.ckpt"

    def trainer_saves_the_next_epoch():
        checkpoint.write_bytes(b"weights-2" * 100)  # same size, other bytes, after publish hashed the folder

    store = _Hooked(backend, "upload", trainer_saves_the_next_epoch)
    registry = Registry(store, "lab", tmp_path / "cache-trainer", worker_id="gpu@trainer", user="tester")
    try:
        entry = registry.publish(folder, model_type="t", checkpoint="best.ckpt", alias="prod")
    except ConflictError:  # refusing is fine too; publishing bytes nobody can pull is not
        assert registry.manifest().models == {}
        return
    assert store.fired
    assert make_registry("gpu@reader").show("prod").id == entry.id
    _pullable(make_registry, entry)


def _corrupt_store_copy(backend, key: str, claimed_sha256: str) -> None:
    """Replace a stored file by other bytes whose metadata still claims the published checksum."""
    from labpipe.registry import FilesystemBackend

    if isinstance(backend, FilesystemBackend):
        backend.path("lab", key).write_bytes(b"half-uploaded")
    else:
        backend.client.put_object(
            Bucket=backend.bucket,
            Key=backend._key("lab", key),
            Body=b"half-uploaded",
            Metadata={"sha256": claimed_sha256},
        )


def test_republishing_uploads_again_when_the_stored_bytes_differ(make_registry, model_dir):
    registry = make_registry("gpu@trainer")
    folder = model_dir()
    entry = registry.publish(folder, model_type="t", checkpoint="best.ckpt")
    _corrupt_store_copy(registry.backend, f"models/{entry.id}/best.ckpt", entry.files["best.ckpt"].sha256)
    again = registry.publish(folder, model_type="t", checkpoint="best.ckpt")  # the repair a user would try
    assert again.id == entry.id
    _pullable(make_registry, again)


def _orphan(make_registry, model_dir):
    """Files of a model in the store that no manifest entry names (a publish killed, or a model deleted)."""
    from labpipe.registry import Manifest
    from labpipe.registry.registry import MANIFEST

    registry = make_registry("gpu@first")
    folder = model_dir()
    entry = registry.publish(folder, model_type="t", checkpoint="best.ckpt")
    backend = registry.backend
    data, etag = backend.read("lab", MANIFEST)
    manifest = Manifest.parse(data, "test")
    del manifest.models[entry.id]
    manifest.revision += 1
    backend.write_if("lab", MANIFEST, manifest.to_bytes(), etag)  # the entry goes, the files stay
    return folder, entry


def test_gc_that_read_the_manifest_before_a_republish_does_not_delete_its_files(make_registry, model_dir):
    folder, entry = _orphan(make_registry, model_dir)
    gc = make_registry("gpu@gc")
    publisher = make_registry("gpu@second")

    def republish():  # after gc read the manifest, before it deletes: the files are there, publish skips them
        publisher.publish(folder, model_type="t", checkpoint="best.ckpt", alias="prod")

    gc.backend = _Hooked(gc.backend, "list", republish)
    gc.gc(min_age_seconds=0)
    assert gc.backend.fired
    assert make_registry("gpu@x").manifest().aliases["prod"] == entry.id
    _pullable(make_registry, entry)


def test_gc_between_a_publishers_checks_and_its_manifest_write_does_not_delete_its_files(make_registry, model_dir):
    from labpipe.registry import Manifest
    from labpipe.registry.registry import MANIFEST

    folder, entry = _orphan(make_registry, model_dir)
    gc = make_registry("gpu@gc")
    publisher = make_registry("gpu@second")

    def writes_the_entry(room, key, data, etag):
        return key == MANIFEST and entry.id in Manifest.parse(data, key).models

    publisher.backend = _Hooked(publisher.backend, "write_if", lambda: gc.gc(min_age_seconds=0), writes_the_entry)
    publisher.publish(folder, model_type="t", checkpoint="best.ckpt", alias="prod")
    assert publisher.backend.fired
    _pullable(make_registry, entry)


def test_a_delete_between_a_republishers_checks_and_its_manifest_write_does_not_leave_it_without_files(
    make_registry, model_dir
):
    folder = model_dir()
    first = make_registry("gpu@first").publish(folder, model_type="t", checkpoint="best.ckpt", alias="prod")
    admin = make_registry("gpu@admin")
    publisher = make_registry("gpu@second")
    # the model is in the manifest: the republisher finds its files stored, then an admin deletes the model
    publisher.backend = _Hooked(publisher.backend, "write_if", lambda: admin.delete(first.id, force=True))
    again = publisher.publish(folder, model_type="t", checkpoint="best.ckpt", alias="latest")
    assert publisher.backend.fired and again.id == first.id
    _pullable(make_registry, again)


@pytest.fixture(scope="module")
def careless_s3_server():
    """An S3 endpoint that accepts every conditional write (drops If-Match / If-None-Match)."""
    from labpipe.registry.s3server import LocalS3Server

    with LocalS3Server(ignore_conditional_writes=True) as server:
        yield server


def test_opening_a_store_that_ignores_if_match_fails_with_a_clear_error(careless_s3_server, tmp_path):
    from labpipe.registry import ModelStoreSettings

    settings = ModelStoreSettings(
        backend="s3",
        endpoint_url=careless_s3_server.endpoint_url,
        bucket="models",
        access_key_id="testing",
        secret_access_key="testing",
        cache_dir=tmp_path / "cache",
    )
    settings.make_backend().ensure_bucket()
    with pytest.raises(ConfigError, match="If-Match") as raised:
        settings.open(room="lab")
    assert careless_s3_server.endpoint_url in str(raised.value)


class _AlteringStore:
    """An S3 store whose uploads land with other bytes than were sent (a faulty gateway, a truncating proxy)."""

    def __init__(self, backend) -> None:
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def upload(self, room, key, source, sha256):
        client = self._backend.client._client  # the boto3 client inside S3Backend's wrapper
        original = client.upload_file

        def altered(filename, bucket, s3_key, ExtraArgs=None, **kwargs):  # noqa: N803 - boto3's name
            client.put_object(Bucket=bucket, Key=s3_key, Body=b"altered", Metadata=ExtraArgs["Metadata"])

        client.upload_file = altered
        try:
            return self._backend.upload(room, key, source, sha256)
        finally:
            client.upload_file = original


def test_an_upload_whose_stored_bytes_differ_is_refused_and_not_published(s3_server, tmp_path, model_dir):
    from labpipe.registry import Registry

    from .conftest import s3_backend

    backend = s3_backend(s3_server)
    registry = Registry(_AlteringStore(backend), "lab", tmp_path / "cache")
    with pytest.raises(ConflictError, match="stored bytes"):
        registry.publish(model_dir(), model_type="t", alias="prod")
    assert registry.manifest().models == {} and registry.manifest().aliases == {}
