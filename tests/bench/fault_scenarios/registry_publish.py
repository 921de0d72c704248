"""Registry publish: a model published to an S3 room (moto on loopback), killed mid-upload, then published again.

Each trial has its own room prefix in one S3 server that lives as long as the campaign (started by the driver,
so a kill of the step does not take the store with it). The room already holds a model (alias ``prod``) and the
files of an orphan (a model whose entry was removed), so the step's ``gc`` has something to collect. The step
publishes a folder (a 24 MiB checkpoint, uploaded in parts, and a config) with alias ``latest``, then runs
``gc``. The check: the source folder is untouched; no manifest entry points at a missing or partial object and
no alias dangles (after the kill and after the rerun); after the rerun the model is in the manifest under
``latest``, its publishing lease is released, and a worker that never saw it pulls exactly the source bytes.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
from pathlib import Path

from fault_scenarios import Context, Outcome, Scenario, load_checksums, save_checksums, tree_checksums, unique

BUCKET = "faults"
ROOM = "lab"
CHECKPOINT_BYTES = 24 << 20
_server = None


def _endpoint() -> str:
    """The campaign's S3 endpoint (the driver starts it once; steps get it from the environment)."""
    global _server
    if "LABPIPE_FAULTS_S3" in os.environ:
        return os.environ["LABPIPE_FAULTS_S3"]
    if _server is None:
        from labpipe.registry.s3server import LocalS3Server

        _server = LocalS3Server().start()
        atexit.register(_server.stop)
    return _server.endpoint_url


def _backend(endpoint: str, prefix: str):
    from labpipe.registry import S3Backend

    return S3Backend(BUCKET, endpoint_url=endpoint, prefix=prefix, access_key_id="faults", secret_access_key="faults")


def _trial(root: Path) -> dict:
    return json.loads((root / "trial.json").read_text())


def _registry(root: Path, cache: str, worker: str):
    from labpipe.registry import Registry

    trial = _trial(root)
    return Registry(_backend(trial["endpoint"], trial["prefix"]), ROOM, root / cache, worker_id=worker, user="faults")


def _drop_other_trials(endpoint: str, keep_prefix: str) -> None:
    """Earlier trials are checked and done: their objects go, so the in-memory store stays small."""
    backend = _backend(endpoint, keep_prefix)
    backend.ensure_bucket()
    client = backend.client
    token = None
    while True:
        page = client.list_objects_v2(Bucket=BUCKET, **({"ContinuationToken": token} if token else {}))
        for item in page.get("Contents", []):
            if not item["Key"].startswith(backend.prefix):
                client.delete_object(Bucket=BUCKET, Key=item["Key"])
        token = page.get("NextContinuationToken")
        if not token:
            return


class RegistryPublish(Scenario):
    name = "registry-publish"
    description = "publish a 24 MiB model to an S3 room (multipart) with an alias, then gc; killed anywhere"
    timeout = 300.0

    def env(self, ctx: Context, root: Path) -> dict:
        return super().env(ctx, root) | {"LABPIPE_FAULTS_S3": _endpoint()}

    def prepare(self, ctx: Context, root: Path) -> None:
        endpoint, prefix = _endpoint(), f"faults-{unique()}"
        _drop_other_trials(endpoint, prefix)
        (root / "trial.json").write_text(json.dumps({"endpoint": endpoint, "prefix": prefix}))
        model = root / "model"
        (model / "sub").mkdir(parents=True)
        seed = hashlib.sha256(prefix.encode()).digest()
        block = (seed * (1 << 15))[: 1 << 20]  # 1 MiB of this trial's bytes
        with open(model / "weights.bin", "wb") as out:
            for i in range(CHECKPOINT_BYTES >> 20):
                out.write(bytes([i]) + block[1:])
        (model / "sub" / "config.json").write_text(json.dumps({"layers": 3, "trial": prefix}))
        save_checksums(root, "model", tree_checksums(model))
        # the room before the step: a model named by ``prod`` and an orphan (entry removed, files left)
        admin = _registry(root, "cache-admin", "gpu@admin")
        for name in ("base", "orphan"):
            folder = root / name
            folder.mkdir()
            (folder / "w.bin").write_bytes(name.encode() * 4096)
        admin.publish(root / "base", model_type="faults", alias="prod")
        orphan = admin.publish(root / "orphan", model_type="faults")

        def forget(manifest) -> bool:
            manifest.models.pop(orphan.id, None)
            return True

        admin.update(forget)

    def run(self, ctx: Context, root: Path) -> None:
        registry = _registry(root, "cache-trainer", "gpu@trainer")
        registry.publish(root / "model", model_type="faults", config={"trial": _trial(root)["prefix"]}, alias="latest")
        registry.gc(min_age_seconds=0)

    def check(self, ctx: Context, root: Path, finished: bool = True) -> Outcome:
        expected = load_checksums(root, "model")
        lost = [f"model/{p}" for p in sorted(expected) if tree_checksums(root / "model").get(p) != expected[p]]
        reader = _registry(root, f"cache-check-{unique()}", "gpu@check")
        backend, manifest = reader.backend, reader.manifest()
        half = [f"alias {a} -> {i} (no such model)" for a, i in manifest.dangling_aliases().items()]
        for model_id, entry in manifest.models.items():
            for name, file in entry.files.items():
                stored = backend.stored_sha256(ROOM, f"models/{model_id}/{name}", expect=file.sha256)
                if stored != file.sha256:
                    half.append(f"models/{model_id}/{name}: {'missing' if stored is None else 'other bytes'}")
        complete, detail = True, ""
        if finished:
            target = manifest.find("latest")
            if target is None or manifest.find("prod") is None:
                complete, detail = False, f"aliases {manifest.aliases}"
            else:
                pulled = reader.resolve("latest").path
                got = tree_checksums(pulled)
                complete = got == expected and not manifest.publishing
                detail = "" if complete else f"pulled {sorted(got)} leases {sorted(manifest.publishing)}"
                lost += [f"pulled {p}" for p in sorted(expected) if got.get(p) != expected[p]]
        return Outcome(complete=complete, lost_files=lost, half_written=half, detail=detail)


SCENARIO = RegistryPublish()
