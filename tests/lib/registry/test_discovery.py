"""Worker discovery by metadata filters (the seed's query syntax)."""

from __future__ import annotations

import datetime as dt

import pytest
from labpipe.errors import InvalidInput
from labpipe.registry import host_metadata, matches

WORKERS = {
    "gpu@big": {"gpu_memory_mb": 16384, "gpu_model": "RTX 4090", "status": "available", "features": ["mei", "nnunet"]},
    "gpu@small": {"gpu_memory_mb": 6144, "gpu_model": "GTX 1060", "status": "available", "features": ["mei"]},
    "gpu@busy": {"gpu_memory_mb": 24576, "gpu_model": "A5000", "status": "busy", "features": []},
    "gpu@odd": {"gpu_memory_mb": "n/a", "status": "available"},
}


def test_operators():
    meta = WORKERS["gpu@big"]
    assert matches(meta, {"gpu_memory_mb": {"$gte": 8000}, "status": {"$eq": "available"}})
    assert matches(meta, {"gpu_memory_mb": {"$gt": 8000, "$lt": 20000}, "status": "available"})
    assert not matches(meta, {"gpu_memory_mb": {"$lte": 8000}})
    assert matches(meta, {"gpu_model": {"$in": ["RTX 4090", "A100"]}, "features": {"$contains": "nnunet"}})
    assert matches(meta, {"status": {"$ne": "busy"}, "gpu_model": {"$nin": ["A5000"]}})
    assert matches(meta, {"hostname": {"$exists": False}}) and not matches(meta, {"hostname": {"$exists": True}})
    assert not matches(WORKERS["gpu@odd"], {"gpu_memory_mb": {"$gte": 8000}})  # nonsense never matches
    assert not matches(meta, {"missing": {"$gte": 1}}) and matches(meta, {"missing": {"$ne": 1}})


def test_discover_filters_pool_and_heartbeats(make_registry):
    registry = make_registry()
    for worker, meta in WORKERS.items():
        make_registry(worker).register_worker(meta)
    registry.register_worker({"gpu_memory_mb": 81920, "status": "available"}, worker_id="cpu@x", pool="cpu")
    found = registry.discover({"gpu_memory_mb": {"$gte": 8000}, "status": {"$eq": "available"}})
    assert [w.worker_id for w in found] == ["gpu@big"]
    assert {w.worker_id for w in registry.discover({"features": {"$contains": "mei"}})} == {"gpu@big", "gpu@small"}
    assert [w.worker_id for w in registry.discover({}, only={"gpu@small"})] == ["gpu@small"]
    assert [w.worker_id for w in registry.discover({"gpu_memory_mb": {"$gte": 8000}}, pool="cpu")] == ["cpu@x"]
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    assert all(w.age_seconds(later) > 600 for w in registry.workers())  # stale records are left out by age


def test_unknown_operator_is_named():
    from labpipe.registry.discovery import check_filters

    with pytest.raises(InvalidInput, match=r"gpu_memory_mb.\$gtee"):
        check_filters({"gpu_memory_mb": {"$gtee": 8000}})


def test_host_metadata_describes_this_host():
    meta = host_metadata()
    assert meta["cpu_count"] >= 1 and meta["memory_mb"] > 0 and meta["status"] == "available"
    assert meta["device"] in ("cpu", "cuda") and (meta["gpu_count"] == 0) == (meta["device"] == "cpu")
