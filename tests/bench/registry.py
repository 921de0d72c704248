"""Benchmark: 20 concurrent publishers to one room of the S3 registry on loopback (moto's server).

Each publisher is its own process with its own S3 client: it uploads a 1 MB model and
adds it (with its own alias) to the room's manifest by conditional writes (If-Match
on the ETag, re-read and retry on 412/409). Measured in the same run, the baseline:
the same publishers doing a plain read-modify-write of the manifest (no If-Match),
which is what a registry without optimistic locking does.

Run alone: ``flock /tmp/labpipe-bench.lock .venv/bin/python tests/bench/registry.py``.
The last line is one JSON object: publishers, models_in_manifest, lost_updates,
p50_ms, p99_ms (and the baseline's figures, conflicts retried, dangling aliases).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

BUCKET = "bench-models"


class _NoLocking:
    """The baseline: manifest writes ignore the etag (read-modify-write, last writer wins)."""

    def __init__(self, backend) -> None:
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def write_if(self, room, key, data, etag):
        self._backend.put_bytes(room, key, data)
        return self._backend.read(room, key)[1]


def _publisher(args) -> dict:
    endpoint, prefix, room, index, locking, start_at, workdir = args
    from labpipe.files import sha256_file
    from labpipe.registry import Registry, S3Backend

    backend = S3Backend(BUCKET, endpoint_url=endpoint, prefix=prefix, access_key_id="bench", secret_access_key="bench")
    registry = Registry(
        backend if locking else _NoLocking(backend),
        room,
        Path(workdir) / f"cache-{index}",
        worker_id=f"gpu@bench-{index}",
    )
    folder = Path(workdir) / f"model-{index}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "best.ckpt").write_bytes(os.urandom(1 << 20))
    (folder / "training_config.json").write_text(json.dumps({"publisher": index}))
    time.sleep(max(0.0, start_at - time.time()))  # all publishers start together
    from labpipe.errors import ConflictError
    from labpipe.registry import derive_model_id
    from labpipe.registry.manifest import ModelFile

    files = {p.name: ModelFile(sha256=sha256_file(p), size_bytes=p.stat().st_size) for p in folder.iterdir()}
    model_id = derive_model_id("bench", {"publisher": index}, files)
    t0 = time.perf_counter()
    try:
        registry.publish(
            folder, model_type="bench", config={"publisher": index}, checkpoint="best.ckpt", alias=f"publisher-{index}"
        )
    except ConflictError:  # the baseline: its publishing lease was overwritten (a lost update) until it gave up
        if locking:
            raise
    return {"id": model_id, "ms": 1000 * (time.perf_counter() - t0), "conflicts": registry.stats.conflicts}


def run_round(endpoint: str, publishers: int, locking: bool, workdir: str) -> dict:
    from labpipe.registry import Registry, S3Backend

    prefix, room = f"r{uuid.uuid4().hex[:8]}", "bench-room"
    start_at = time.time() + 3.0
    jobs = [(endpoint, prefix, room, i, locking, start_at, workdir) for i in range(publishers)]
    with mp.get_context("spawn").Pool(publishers) as pool:
        results = pool.map(_publisher, jobs)
    reader = Registry(
        S3Backend(BUCKET, endpoint_url=endpoint, prefix=prefix, access_key_id="b", secret_access_key="b"),
        room,
        Path(workdir) / "reader",
    )
    manifest = reader.manifest()
    published = {r["id"] for r in results}
    return {
        "models_in_manifest": len(published & set(manifest.models)),
        "lost_updates": len(published - set(manifest.models)),
        "dangling_aliases": len(manifest.dangling_aliases()),
        "aliases": len(manifest.aliases),
        "ms": [r["ms"] for r in results],
        "conflicts": sum(r["conflicts"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--publishers", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from labpipe.registry import S3Backend
    from labpipe.registry.s3server import LocalS3Server

    with LocalS3Server() as server, tempfile.TemporaryDirectory() as workdir:
        S3Backend(
            BUCKET, endpoint_url=server.endpoint_url, access_key_id="b", secret_access_key="b", create_bucket=True
        )
        figures = {}
        for name, locking in (("conditional", True), ("baseline", False)):
            rounds = [run_round(server.endpoint_url, args.publishers, locking, workdir) for _ in range(args.rounds)]
            ms = np.concatenate([r["ms"] for r in rounds])
            figures[name] = {
                "models_in_manifest": min(r["models_in_manifest"] for r in rounds),
                "lost_updates": sum(r["lost_updates"] for r in rounds),
                "dangling_aliases": sum(r["dangling_aliases"] for r in rounds),
                "conflicts_retried": sum(r["conflicts"] for r in rounds),
                "p50_ms": float(np.percentile(ms, 50)),
                "p99_ms": float(np.percentile(ms, 99)),
            }
            print(f"{name:<12} rounds {args.rounds} x {args.publishers} publishers: {figures[name]}", flush=True)
    ok, base = figures["conditional"], figures["baseline"]
    print(
        json.dumps(
            {
                "publishers": args.publishers,
                "rounds": args.rounds,
                "models_in_manifest": ok["models_in_manifest"],
                "lost_updates": ok["lost_updates"],
                "dangling_aliases": ok["dangling_aliases"],
                "conflicts_retried": ok["conflicts_retried"],
                "p50_ms": round(ok["p50_ms"], 1),
                "p99_ms": round(ok["p99_ms"], 1),
                "baseline_models_in_manifest": base["models_in_manifest"],
                "baseline_lost_updates": base["lost_updates"],
                "baseline_p50_ms": round(base["p50_ms"], 1),
                "baseline_p99_ms": round(base["p99_ms"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
