"""The room registry on both backends: publish, ids, aliases, resolve, cache, conflicts, crashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from labpipe.errors import ConflictError, InvalidInput
from labpipe.files import sha256_file
from labpipe.registry import Manifest, ManifestConflict

SEED_MANIFEST = {
    "version": "1.0",
    "room_id": "lab-mice-2025",
    "updated_at": "2025-11-11T12:00:00Z",
    "models": {
        "a3f5e8c9": {
            "id": "a3f5e8c9",
            "alias": "production-v2",
            "model_type": "centroid",
            "trained_at": "2025-11-11T10:00:00Z",
            "trained_by": "user-123",
            "trained_on_worker": "worker-gpu-01",
            "s3_path": "s3://sleap-rtc-rooms/lab-mice-2025/models/a3f5e8c9/",
            "checkpoint_path": "s3://sleap-rtc-rooms/lab-mice-2025/models/a3f5e8c9/best.ckpt",
            "size_bytes": 8388608,
            "available_on_workers": ["worker-gpu-01", "worker-gpu-03"],
            "notes": "Production model validated on 2025-11-10",
            "tags": ["validated", "production", "v2.0"],
            "training": {"dataset_hash": "d7f3a1b2", "epochs": 100, "final_loss": 0.023, "training_duration_sec": 3600},
        }
    },
    "aliases": {"production-v2": "a3f5e8c9", "latest-centroid": "a3f5e8c9"},
}


def test_the_seed_manifest_reads_and_round_trips():
    manifest = Manifest.parse(json.dumps(SEED_MANIFEST).encode(), "seed")
    assert manifest.find("production-v2").training.epochs == 100
    assert manifest.find("latest-centroid").id == "a3f5e8c9"
    again = json.loads(manifest.to_bytes())
    for field, value in SEED_MANIFEST["models"]["a3f5e8c9"].items():
        if field not in ("trained_at",):
            assert again["models"]["a3f5e8c9"][field] == value, field
    assert again["aliases"] == SEED_MANIFEST["aliases"]
    assert again["updated_at"] == "2025-11-11T12:00:00Z"


def test_a_manifest_of_another_major_version_is_refused():
    with pytest.raises(InvalidInput, match="schema version 2.0"):
        Manifest.parse(json.dumps({**SEED_MANIFEST, "version": "2.0"}).encode(), "seed")


def test_publish_then_resolve_on_another_worker(make_registry, model_dir):
    trainer, user = make_registry("gpu@trainer"), make_registry("gpu@user")
    entry = trainer.publish(
        model_dir(),
        model_type="mei-twin",
        config={"layers": 3},
        checkpoint="best.ckpt",
        alias="production-v2",
        training={"dataset_hash": "d7f3a1b2", "epochs": 10, "final_loss": 0.5},
        tags=["validated"],
    )
    assert len(entry.id) == 8 and entry.alias == "production-v2"
    assert entry.size_bytes == 900 + len('{"lr": 0.001}')
    assert entry.checkpoint_path.endswith(f"models/{entry.id}/best.ckpt")
    model = user.resolve("production-v2")
    assert model.id == entry.id and model.downloaded
    assert sha256_file(model.checkpoint) == entry.files["best.ckpt"].sha256
    assert not user.resolve(entry.id).downloaded  # second use: from the cache
    assert user.pull("production-v2").id == entry.id
    assert trainer.show(entry.id).available_on_workers == ["gpu@user"]  # pull records the holder
    assert user.list(model_type="mei-twin", tags=["validated"])[0].id == entry.id
    assert user.list(model_type="nnunet") == []


def test_same_content_same_id_and_no_new_entry(make_registry, model_dir):
    registry = make_registry()
    first = registry.publish(model_dir(), model_type="t", config={"a": 1})
    revision = registry.manifest().revision
    again = registry.publish(model_dir(name="copy"), model_type="t", config={"a": 1})
    assert again.id == first.id and registry.manifest().revision == revision
    other = registry.publish(model_dir(b"weights-2", name="m2"), model_type="t", config={"a": 1})
    changed_config = registry.publish(model_dir(name="m3"), model_type="t", config={"a": 2})
    assert len({first.id, other.id, changed_config.id}) == 3


def test_aliases_move_atomically_and_never_dangle(make_registry, model_dir):
    registry = make_registry()
    one = registry.publish(model_dir(), model_type="t", alias="production")
    two = registry.publish(model_dir(b"w2", "m2"), model_type="t")
    registry.set_alias("production", two.id)
    manifest = registry.manifest()
    assert manifest.aliases == {"production": two.id}
    assert manifest.models[two.id].alias == "production" and manifest.models[one.id].alias is None
    with pytest.raises(InvalidInput, match="no model or alias"):
        registry.set_alias("staging", "deadbeef")
    with pytest.raises(InvalidInput, match="looks like a model id"):
        registry.set_alias("abcdef12", two.id)
    with pytest.raises(ConflictError, match="still named by aliases"):
        registry.delete(two.id)
    registry.delete(two.id, force=True)
    manifest = registry.manifest()
    assert two.id not in manifest.models and manifest.dangling_aliases() == {} and "production" not in manifest.aliases
    with pytest.raises(InvalidInput):
        registry.resolve("production")


def test_a_moved_alias_is_followed_and_removed_models_leave_the_cache(make_registry, model_dir):
    worker, admin = make_registry("gpu@w"), make_registry("gpu@admin")
    one = admin.publish(model_dir(), model_type="t", alias="prod")
    assert worker.resolve("prod").id == one.id
    two = admin.publish(model_dir(b"w2", "m2"), model_type="t", alias="prod")
    assert worker.resolve("prod").id == two.id  # the worker re-reads the changed manifest
    admin.delete(one.id)
    assert worker.refresh_cache() == [one.id]
    assert worker.cache.cached_ids("lab") == [two.id]


def test_a_corrupted_cached_model_is_downloaded_again(make_registry, model_dir):
    registry = make_registry()
    entry = registry.publish(model_dir(), model_type="t", checkpoint="best.ckpt")
    path = registry.resolve(entry.id).checkpoint
    os.chmod(path, 0o644)
    path.write_bytes(b"weights-1" * 99 + b"weights-X")  # same size, different bytes
    model = registry.resolve(entry.id)
    assert model.downloaded and sha256_file(model.checkpoint) == entry.files["best.ckpt"].sha256
    os.unlink(model.checkpoint)
    assert registry.resolve(entry.id).downloaded


def test_a_damaged_store_copy_is_reported_not_cached(tmp_path, model_dir):
    from labpipe.registry import FilesystemBackend, Registry

    registry = Registry(FilesystemBackend(tmp_path / "store"), "lab", tmp_path / "cache")
    entry = registry.publish(model_dir(), model_type="t", checkpoint="best.ckpt")
    (tmp_path / "store" / "lab" / "models" / entry.id / "best.ckpt").write_bytes(b"rot")
    with pytest.raises(InvalidInput, match="does not match the manifest's checksum"):
        registry.resolve(entry.id)
    assert registry.cache.cached_ids("lab") == []


def test_a_stale_write_is_refused(backend):
    from labpipe.registry.registry import MANIFEST

    etag = backend.write_if("lab", MANIFEST, b'{"room_id": "lab"}', None)
    with pytest.raises(ManifestConflict):
        backend.write_if("lab", MANIFEST, b'{"room_id": "lab", "revision": 1}', None)  # create over existing
    backend.write_if("lab", MANIFEST, b'{"room_id": "lab", "revision": 1}', etag)
    with pytest.raises(ManifestConflict):
        backend.write_if("lab", MANIFEST, b'{"room_id": "lab", "revision": 2}', etag)  # etag of the old version


def test_concurrent_publishers_lose_no_update(make_registry, model_dir):
    n = 10
    folders = [model_dir(f"w{i}".encode(), f"m{i}") for i in range(n)]
    registries = [make_registry(f"gpu@{i}") for i in range(n)]
    ids, errors = [None] * n, []
    barrier = threading.Barrier(n)

    def publish(i):
        barrier.wait()
        try:
            ids[i] = registries[i].publish(folders[i], model_type="t", alias=f"run-{i}").id
            registries[i].set_alias("latest", ids[i])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    manifest = make_registry("gpu@reader").manifest()
    assert sorted(manifest.models) == sorted(ids)
    assert {manifest.aliases[f"run-{i}"] for i in range(n)} == set(ids)
    assert manifest.aliases["latest"] in ids and manifest.dangling_aliases() == {}
    assert manifest.revision == 3 * n  # every write landed exactly once (lease + entry, then alias)
    assert manifest.publishing == {} and manifest.collecting == {}


CRASHING_PUBLISH = """
import os, sys
from pathlib import Path
from labpipe.registry import FilesystemBackend, Registry

backend = FilesystemBackend(Path(sys.argv[1]))
write_if, writes = backend.write_if, []
def crash(room, key, data, etag):
    writes.append(key)
    if len(writes) == 2:
        os._exit(9)  # the process dies after the files are stored, before the manifest entry
    return write_if(room, key, data, etag)  # the first write: the publishing lease
backend.write_if = crash
Registry(backend, "lab", Path(sys.argv[2])).publish(Path(sys.argv[3]), model_type="t")
"""


def test_a_publish_killed_between_files_and_manifest_leaves_no_entry(tmp_path, model_dir):
    from labpipe.registry import FilesystemBackend, Registry

    store, folder = tmp_path / "store", model_dir()
    registry = Registry(FilesystemBackend(store), "lab", tmp_path / "cache")
    registry.publish(model_dir(b"other", "m0"), model_type="t", alias="prod")
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(CRASHING_PUBLISH))
    done = subprocess.run([sys.executable, str(script), str(store), str(tmp_path / "c2"), str(folder)], check=False)
    assert done.returncode == 9
    manifest = registry.manifest()
    assert len(manifest.models) == 1 and manifest.dangling_aliases() == {}
    stored = {p.parent.name for p in (store / "lab" / "models").rglob("best.ckpt")}
    orphan = stored - set(manifest.models)
    assert len(orphan) == 1  # the files were uploaded first
    assert registry.gc(min_age_seconds=3600) == []  # could be a publish still in progress
    assert registry.gc(min_age_seconds=0) == []  # its publishing lease (a day) still holds the id
    assert sorted(registry.manifest().publishing) == sorted(orphan)
    assert len(registry.gc(min_age_seconds=0, publish_lease_seconds=0)) == 2
    assert registry.manifest().publishing == {} and registry.manifest().collecting == {}
    assert not (store / "lab" / "models" / orphan.pop()).exists()


def test_bad_inputs_get_clear_errors(make_registry, tmp_path):
    registry = make_registry()
    with pytest.raises(InvalidInput, match="expected a file or a folder"):
        registry.publish(tmp_path / "nope", model_type="t")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="holds no files"):
        registry.publish(tmp_path / "empty", model_type="t")
    with pytest.raises(InvalidInput, match="room name"):
        make_registry(room="Lab Mice")
    with pytest.raises(InvalidInput, match="no model or alias"):
        registry.show("production")


def test_an_unreachable_store_falls_back_to_the_cached_manifest(s3_server, tmp_path, model_dir):
    from labpipe.registry import Registry, S3Backend
    from labpipe.registry.backends import StoreUnreachable
    from labpipe.registry.s3server import free_port

    from .conftest import s3_backend

    backend = s3_backend(s3_server)
    registry = Registry(backend, "lab", tmp_path / "cache")
    entry = registry.publish(model_dir(), model_type="t", alias="prod")
    registry.resolve("prod")
    dead = S3Backend(
        "models",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        prefix=backend.prefix,
        access_key_id="x",
        secret_access_key="y",
    )
    offline = Registry(dead, "lab", tmp_path / "cache")
    assert offline.resolve("prod").id == entry.id  # from the verified cache, with the last manifest seen
    with pytest.raises(StoreUnreachable, match="check the endpoint"):
        Registry(dead, "lab", tmp_path / "empty-cache").resolve("prod")


class _LostAnswers:
    """A store whose first manifest writes land but whose answers are lost (a timeout after the write)."""

    def __init__(self, backend, lose: int) -> None:
        self._backend, self.lose = backend, lose

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def write_if(self, room, key, data, etag):
        from labpipe.registry.backends import StoreUnreachable

        new = self._backend.write_if(room, key, data, etag)
        if self.lose:
            self.lose -= 1
            raise StoreUnreachable("store", "read timeout after the write")
        return new


def test_a_write_whose_answer_is_lost_is_applied_exactly_once(backend, tmp_path, model_dir):
    from labpipe.registry import Registry

    registry = Registry(_LostAnswers(backend, lose=1), "lab", tmp_path / "cache")
    entry = registry.publish(model_dir(), model_type="t", alias="prod")
    manifest = registry.manifest()
    # two writes (publishing lease, then entry and lease release); the lost answer of the first is not repeated
    assert list(manifest.models) == [entry.id] and manifest.revision == 2 and registry.stats.ambiguous == 1
    assert manifest.publishing == {}
    registry.backend.lose = 1
    registry.remove_alias("prod")
    registry.backend.lose = 1
    registry.delete(entry.id)  # entry out with a collecting lease, files deleted, lease released
    assert registry.manifest().models == {} and registry.manifest().revision == 5
    assert registry.manifest().collecting == {}
