"""How the allocator's admin endpoints start work: a Prefect flow run, or a thread in the allocator.

The allocator's ``POST /admin/vms`` and ``/admin/vms/destroy`` start the
matching flow. ``labpipe vms serve`` uses the Prefect launcher (in
``labpipe.flows.vms``: lib never imports Prefect); ``InlineLauncher`` runs the
same lifecycle functions on a worker thread of the allocator, for a lab with no
Prefect server and for the tests.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from labpipe.vms.lifecycle import create_vms, destroy_vms, reap
from labpipe.vms.settings import AllocatorSettings
from labpipe.vms.store import VmStore

log = logging.getLogger(__name__)


class Launcher(Protocol):
    name: str

    def create(self, count: int, command: list[str], request_key: str) -> dict: ...

    def destroy(self, ids: list[int]) -> dict: ...

    def reap(self) -> dict: ...


class InlineLauncher:
    """Runs create/destroy/reap one at a time on a thread of this process; returns at once."""

    name = "inline"

    def __init__(self, store: VmStore, settings: AllocatorSettings, allocator_url: str | None = None) -> None:
        self.store, self.settings = store, settings
        self.allocator_url = allocator_url or settings.allocator_url
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vm-launcher")
        self._jobs: dict[str, Future] = {}
        self._lock = threading.Lock()

    def _submit(self, job: str, fn, *args, **kwargs) -> dict:
        def run():
            try:
                return fn(*args, **kwargs).as_json()
            except Exception:
                log.exception("%s failed", job)
                raise

        with self._lock:
            self._jobs[job] = self._pool.submit(run)
        return {"launcher": self.name, "job": job}

    def create(self, count: int, command: list[str], request_key: str) -> dict:
        return self._submit(
            f"create-{request_key}", create_vms, self.store, self.settings, count,
            request_key=request_key, command=command, allocator_url=self.allocator_url,
        )  # fmt: skip

    def destroy(self, ids: list[int]) -> dict:
        return self._submit(f"destroy-{'-'.join(map(str, ids[:5]))}", destroy_vms, self.store, self.settings, ids)

    def reap(self) -> dict:
        return self._submit("reap", reap, self.store, self.settings, allocator_url=self.allocator_url)

    def result(self, job: str, timeout: float | None = None) -> dict:
        """The JSON report of a job (waits for it); tests and the CLI use this."""
        return self._jobs[job].result(timeout)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)
