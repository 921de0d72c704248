"""Worker discovery: workers publish their metadata to the room; clients filter it.

Each worker writes its own record (``workers/<worker id>.json``: pool, role, tags,
metadata such as ``gpu_memory_mb`` and ``status``, and a heartbeat time), so
records never contend. ``discover`` filters them with the seed's query language,
a small subset of MongoDB's: a plain value means equality, or an operator
document such as ``{"gpu_memory_mb": {"$gte": 8000}, "status": {"$eq": "available"}}``.
Operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $contains`` (list fields).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
from typing import Any

from labpipe.errors import InvalidInput
from labpipe.registry.manifest import utc_now
from pydantic import BaseModel, Field

OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$contains")


class WorkerRecord(BaseModel):
    """What a worker tells the room about itself."""

    worker_id: str
    pool: str = "gpu"
    role: str = "worker"
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)
    heartbeat_at: dt.datetime = Field(default_factory=utc_now)

    def age_seconds(self, now: dt.datetime | None = None) -> float:
        return ((now or utc_now()) - self.heartbeat_at).total_seconds()


def _compare(op: str, value: Any, wanted: Any, present: bool) -> bool:
    if op == "$exists":
        return present == bool(wanted)
    if not present:
        return op in ("$ne", "$nin")
    try:
        if op == "$eq":
            return value == wanted
        if op == "$ne":
            return value != wanted
        if op == "$gt":
            return value > wanted
        if op == "$gte":
            return value >= wanted
        if op == "$lt":
            return value < wanted
        if op == "$lte":
            return value <= wanted
    except TypeError:  # e.g. "n/a" >= 8000: a worker that reports nonsense does not match
        return False
    if op == "$in":
        return value in wanted
    if op == "$nin":
        return value not in wanted
    if op == "$contains":
        return isinstance(value, list | tuple | set) and wanted in value
    raise InvalidInput(op, f"unknown filter operator; expected one of {', '.join(OPERATORS)}")


def matches(metadata: dict[str, Any], filters: dict[str, Any]) -> bool:
    """Whether ``metadata`` satisfies every condition of ``filters`` (see the module docstring)."""
    for field, condition in filters.items():
        present = field in metadata
        value = metadata.get(field)
        if isinstance(condition, dict) and condition and all(str(k).startswith("$") for k in condition):
            if not all(_compare(op, value, wanted, present) for op, wanted in condition.items()):
                return False
        elif not _compare("$eq", value, condition, present):
            return False
    return True


def check_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown operators up front, naming them (a typo must not silently match nothing)."""
    if not isinstance(filters, dict):
        raise InvalidInput(filters, 'worker filter: expected a JSON object such as {"gpu_memory_mb": {"$gte": 8000}}')
    for field, condition in filters.items():
        if isinstance(condition, dict):
            for op in condition:
                if str(op).startswith("$") and op not in OPERATORS:
                    raise InvalidInput(
                        f"{field}.{op}", f"unknown filter operator; expected one of {', '.join(OPERATORS)}"
                    )
    return filters


def _gpus() -> list[dict[str, Any]]:
    """GPUs of this host from nvidia-smi (none on a CPU host)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        name, memory = (part.strip() for part in line.rsplit(",", 1))
        gpus.append({"name": name, "memory_mb": int(float(memory))})
    return gpus


def host_metadata(status: str = "available") -> dict[str, Any]:
    """This host's worker metadata: GPUs (model, count, memory of the largest), CPUs, memory."""
    gpus = _gpus()
    try:
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 20)
    except (ValueError, OSError, AttributeError):
        memory_mb = 0
    return {
        "hostname": socket.gethostname(),
        "gpu_count": len(gpus),
        "gpu_memory_mb": max((g["memory_mb"] for g in gpus), default=0),
        "gpu_model": gpus[0]["name"] if gpus else "",
        "device": "cuda" if gpus else "cpu",
        "cpu_count": os.cpu_count() or 1,
        "memory_mb": memory_mb,
        "status": status,
    }


def default_worker_id(pool: str = "gpu") -> str:
    """The worker's name as ``labpipe up`` names Prefect workers (``<pool>@<host>``), or LABPIPE_WORKER_ID."""
    return os.environ.get("LABPIPE_WORKER_ID") or f"{pool}@{socket.gethostname()}"
