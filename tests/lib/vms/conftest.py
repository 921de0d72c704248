"""VM allocation fixtures: a fresh VM schema per test on a real PostgreSQL, and a real allocator.

The allocator fixture runs the real app on uvicorn in a thread of the test
process, on a port the OS picks, so HTTP is real; tests that must kill the
allocator process use ``labpipe.vms.server.AllocatorProcess`` instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest
from labpipe.vms.server import BackgroundAllocator

POSTGRES_URL = os.environ.get("LABPIPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def fast_settings(tmp_path, url: str = "http://127.0.0.1:1", sessions: SessionSetup | None = None, **limits):
    """Settings with limits small enough for tests (LabLink's are 20 s, 30 s, 3 min, 25 min)."""
    from labpipe.vms.settings import AllocatorSettings, LocalProvisionerSettings, VmLimits

    values = dict(gpu_check_interval=0.5, heartbeat_interval=0.5, silent_after=4.0, stuck_after=30.0, max_reboots=1)
    local = {"root": tmp_path / "local-vms"}
    if sessions is not None and sessions.account:
        local |= {"session_account": sessions.account, "session_root": sessions.root / uuid.uuid4().hex[:8]}
    return AllocatorSettings(
        allocator_url=url,
        local=LocalProvisionerSettings(**local),
        limits=VmLimits(**(values | limits)),
    )


class SessionSetup:
    """A throw-away unprivileged account for users' sessions and a folder it can reach (None when not root)."""

    def __init__(self, account: str | None, root: Path) -> None:
        self.account, self.root = account, root

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.account).pw_uid

    def require(self) -> None:
        if not self.account:
            pytest.skip("running users' sessions as another account needs root and useradd on this machine")


def _processes_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="session")
def sessions():
    """A dedicated test account (``useradd --system``, removed afterwards) and a session root it can traverse.

    pytest's own tmp folders are 0700 root's, so the session root lives in /tmp (0711) instead.
    """
    root = Path(tempfile.mkdtemp(prefix="labpipe-vm-sessions-"))
    root.chmod(0o711)
    account = None
    if os.geteuid() == 0 and shutil.which("useradd") and shutil.which("userdel"):
        account = f"lpvmt{uuid.uuid4().hex[:8]}"
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", account],
            check=True, capture_output=True,
        )  # fmt: skip
    yield SessionSetup(account, root)
    if account:
        uid = pwd.getpwnam(account).pw_uid
        for pid in _processes_of(uid):  # only this throw-away account's processes: a failed test's leftovers
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _processes_of(uid) and time.monotonic() < deadline:
            time.sleep(0.1)
        subprocess.run(["userdel", account], check=False, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


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
def allocator(store, tmp_path, sessions):
    """A running allocator on the test's VM store; local VMs it makes are destroyed afterwards.

    Its local VMs run users' commands as the throw-away test account (``sessions``).
    """
    from labpipe.vms.lifecycle import destroy_vms

    running = ThreadedAllocator(store, fast_settings(tmp_path, sessions=sessions))
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
def make_settings(tmp_path, sessions):
    """``make_settings(**limits)``: allocation settings with small limits and local VMs under tmp_path."""
    return lambda **limits: fast_settings(tmp_path, sessions=sessions, **limits)


@pytest.fixture
def local_vms(allocator, until):
    """``local_vms(count, command=None)``: VMs made through the admin API by the local provisioner, registered."""
    from labpipe.vms.models import VmState

    def make(count: int, command: list[str] | None = None) -> list[int]:
        with allocator.http(allocator.admin) as admin:
            started = admin.post("/admin/vms", json={"count": count, "command": command or []})
            assert started.status_code == 202
        report = allocator.launcher.result(started.json()["job"], timeout=60)
        assert not report["failed"], report
        until(
            lambda: all(vm.state == VmState.available for vm in allocator.store.list(ids=report["created"])),
            60,
            what="local VMs to register",
        )
        return report["created"]

    return make
