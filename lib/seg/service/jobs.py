"""Job records of the service and the ``JobRunner`` protocol that starts, reads and cancels their runs.

A job is a flow run of the ``segment`` deployment: the runner (the Prefect
implementation is ``labpipe.flows.segment.PrefectJobRunner``) submits it with
the job id as idempotency key, so submitting again after a crash finds the same
run instead of starting a second one. The record, ``<data>/jobs/<job>/job.json``,
keeps who asked for what and the last state seen; the flow run is the truth about
the state, read again whenever a client asks (at most once a second per job).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from labpipe.files import atomic_write_text
from labpipe.seg.jobs import JobState
from labpipe.seg.service.live import LiveFolder

TERMINAL = {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}


@dataclass(frozen=True)
class RunRef:
    id: str
    name: str


@dataclass(frozen=True)
class RunStatus:
    """A run's state as the orchestrator names it: type (``RUNNING``...), name (``Previewing``...), message."""

    type: str
    name: str | None = None
    message: str | None = None


class JobRunner(Protocol):
    """Starts, reads and cancels segment runs; raises ``ServiceError`` 503 when the orchestrator is away."""

    name: str

    def submit(self, job_id: str, parameters: dict) -> RunRef: ...

    def status(self, run_id: str) -> RunStatus | None:  # None: no such run (deleted)
        ...

    def cancel(self, run_id: str) -> None: ...


class JobStore:
    """``<data>/jobs/<job>/job.json`` per job; its ``live/`` folder is where the run publishes."""

    def __init__(self, data: Path) -> None:
        self.root = Path(data) / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def folder(self, job_id: str) -> Path:
        return self.root / job_id

    def live(self, job_id: str) -> LiveFolder:
        return LiveFolder(self.folder(job_id) / "live")

    def save(self, record: dict) -> None:
        with self._lock:
            self.folder(record["job_id"]).mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.folder(record["job_id"]) / "job.json", json.dumps(record))

    def load(self, job_id: str) -> dict | None:
        try:
            return json.loads((self.folder(job_id) / "job.json").read_text())
        except (OSError, ValueError):
            return None

    def all(self) -> list[dict]:
        records = [self.load(p.name) for p in self.root.iterdir() if p.is_dir()]
        return sorted((r for r in records if r), key=lambda r: r["created_at"], reverse=True)
