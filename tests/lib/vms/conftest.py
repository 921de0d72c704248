"""VM allocation fixtures: a fresh VM schema per test on a real PostgreSQL, and a real allocator.

The allocator fixture runs the real app on uvicorn in a thread of the test
process, on a port the OS picks, so HTTP is real; tests that must kill the
allocator process use ``labpipe.vms.server.AllocatorProcess`` instead.
"""

from __future__ import annotations

import os
import time
import uuid

import httpx
import pytest
from labpipe.vms.server import BackgroundAllocator

POSTGRES_URL = os.environ.get("LABPIPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def fast_settings(tmp_path, url: str = "http://127.0.0.1:1", **limits):
    """Settings with limits small enough for tests (LabLink's are 20 s, 30 s, 3 min, 25 min)."""
    from labpipe.vms.settings import AllocatorSettings, LocalProvisionerSettings, VmLimits

    values = dict(gpu_check_interval=0.5, heartbeat_interval=0.5, silent_after=4.0, stuck_after=30.0, max_reboots=1)
    return AllocatorSettings(
        allocator_url=url,
        local=LocalProvisionerSettings(root=tmp_path / "local-vms"),
        limits=VmLimits(**(values | limits)),
    )


def _store(target):
    from labpipe.vms.store import VmStore

    store = VmStore(target, f"t{uuid.uuid4().hex[:10]}_vms", pool_size=10, pool_wait=10.0)
    store.ensure_schema()
    return store


@pytest.fixture
def store(embedded_target):
    """A VM store on the embedded PostgreSQL with its own schema, dropped afterwards."""
    s = _store(embedded_target)
    yield s
    s.drop_schema()
    s.close()


def postgres_server_target():
    from labpipe.db.target import DatabaseTarget

    target = DatabaseTarget.from_url(POSTGRES_URL)
    if not target.reachable():
        pytest.skip(f"no PostgreSQL server answers at {target.url} on this machine")
    return target


@pytest.fixture(params=["embedded", "postgres"])
def any_store(request):
    """The same test on the embedded PostgreSQL and on the machine's PostgreSQL server (where it runs)."""
    target = request.getfixturevalue("embedded_target") if request.param == "embedded" else postgres_server_target()
    s = _store(target)
    s.backend_name = request.param
    yield s
    s.drop_schema()
    s.close()


class ThreadedAllocator(BackgroundAllocator):
    """The real allocator in a thread (``BackgroundAllocator``), with an admin token and an HTTP helper."""

    def __init__(self, store, settings) -> None:
        from labpipe.vms.models import Role

        super().__init__(store, settings)
        self.admin = store.issue_token(Role.admin)

    def http(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture
def allocator(store, tmp_path):
    """A running allocator on the test's VM store; local VMs it makes are destroyed afterwards."""
    from labpipe.vms.lifecycle import destroy_vms

    running = ThreadedAllocator(store, fast_settings(tmp_path))
    yield running
    live = [vm.id for vm in store.list(states=["initializing", "available", "in_use", "failed", "destroying"])]
    if live:
        destroy_vms(store, running.settings, live, reason="test teardown")
    running.close()


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail the test with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def until():
    """``until(predicate, timeout, what=...)``: wait for a condition, failing the test if it never holds."""
    return wait_for


@pytest.fixture
def make_settings(tmp_path):
    """``make_settings(**limits)``: allocation settings with small limits and local VMs under tmp_path."""
    return lambda **limits: fast_settings(tmp_path, **limits)
