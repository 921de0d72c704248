"""VM allocation end to end: `labpipe vms serve` as a real process, real local VM clients, faults.

The allocator is killed with SIGKILL and restarted: no VM state is lost and the
clients carry on. A client is killed: the reaper (started through the admin
endpoint, as the every-minute deployment would) recycles its VM within the
limits. Both on the embedded PostgreSQL and on the machine's PostgreSQL server.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import datetime

import httpx
import pytest
from labpipe.vms.local import _alive
from labpipe.vms.server import AllocatorProcess
from labpipe.vms.settings import LocalProvisionerSettings, VmLimits

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
POSTGRES_URL = os.environ.get("LABPIPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
LIMITS = VmLimits(gpu_check_interval=0.5, heartbeat_interval=0.5, silent_after=3.0, stuck_after=30.0, max_reboots=1)


@pytest.fixture(params=["embedded", "postgres"])
def database_url(request) -> str:
    if request.param == "embedded":
        return request.getfixturevalue("embedded_target").url
    from labpipe.db.target import DatabaseTarget

    if not DatabaseTarget.from_url(POSTGRES_URL).reachable():
        pytest.skip(f"no PostgreSQL server answers at {POSTGRES_URL} on this machine")
    return POSTGRES_URL


@pytest.fixture
def served(database_url, tmp_path):
    """A saved block for this test and an allocator process using it; its VMs are destroyed afterwards."""
    from labpipe.blocks.vms import VmAllocation
    from labpipe.vms.store import VmStore
    from prefect.settings import PREFECT_API_URL

    name = f"e2e-{uuid.uuid4().hex[:8]}"
    block = VmAllocation(
        database_url=database_url,
        schema_name=f"t{uuid.uuid4().hex[:10]}_vms",
        local=LocalProvisionerSettings(root=tmp_path / "local-vms"),
        limits=LIMITS,
    )
    block.save(name, overwrite=True)
    env = {"PREFECT_API_URL": PREFECT_API_URL.value()}  # the test harness server holds the block
    allocator = AllocatorProcess(tmp_path / "home", block=name, env=env).start(timeout=120)
    store = VmStore.open(block)
    yield allocator, store, block
    allocator.stop()
    from labpipe.vms.lifecycle import destroy_vms

    destroy_vms(store, block, [vm.id for vm in store.list() if vm.state != "destroyed"], reason="test teardown")
    store.drop_schema()
    store.close()


def api(allocator: AllocatorProcess, token: str | None = None) -> httpx.Client:
    return httpx.Client(base_url=allocator.url, headers={"Authorization": f"Bearer {token or allocator.admin_token}"})


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def vms_by_id(allocator: AllocatorProcess) -> dict[int, dict]:
    with api(allocator) as admin:
        return {vm["id"]: vm for vm in admin.get("/vms").json()["vms"]}


def create(allocator: AllocatorProcess, count: int) -> list[int]:
    with api(allocator) as admin:
        assert admin.post("/admin/vms", json={"count": count}).status_code == 202
    ready = wait_until(
        lambda: (
            (vms := vms_by_id(allocator))
            and len(vms) == count
            and all(v["state"] == "available" for v in vms.values())
            and vms
        ),
        90,
        "the VMs to register",
    )
    return sorted(ready)


def test_faults_lose_nothing_and_silent_vms_are_recycled(served):
    allocator, store, block = served
    ids = create(allocator, 2)
    user = store.issue_token("user", email="ada@lab.org")
    with api(allocator, user) as ada:
        held = ada.post("/vms/request", json={"email": "ada@lab.org"}).json()["vm"]
    idle = next(i for i in ids if i != held["id"])
    before = vms_by_id(allocator)
    pids = {i: before[i]["provider_ref"]["pid"] for i in ids}

    # 1. the allocator crashes (SIGKILL: no shutdown code runs) and comes back on the same port and database
    allocator.kill()
    time.sleep(2.0)  # the clients' beats fail meanwhile
    restarted_at = datetime.now().astimezone()
    allocator.start(timeout=120)
    after = vms_by_id(allocator)
    keep = ("hostname", "state", "owner", "address", "reboots", "provider_ref")
    for vm_id in ids:
        assert {k: after[vm_id][k] for k in keep} == {k: before[vm_id][k] for k in keep}
    with api(allocator, user) as ada:  # the user's token and VM survived the restart
        assert ada.post("/vms/request", json={"email": "ada@lab.org"}).json()["vm"]["id"] == held["id"]

    def beat_since_restart():
        vms = vms_by_id(allocator)
        return all(datetime.fromisoformat(vms[i]["last_heartbeat"]) > restarted_at for i in ids)

    wait_until(beat_since_restart, 30, "both clients to heartbeat to the restarted allocator")
    assert all(_alive(pid) for pid in pids.values())  # the same client processes carried on
    logs = [(allocator.home.parent / "local-vms" / before[i]["hostname"] / "client.log").read_text() for i in ids]
    assert all("allocator unreachable" in log for log in logs)  # they did notice the outage

    # 2. a client process dies: its VM is recycled by the reaper within the limits
    os.kill(pids[idle], signal.SIGKILL)
    killed_at = time.monotonic()

    def recycled():
        with api(allocator) as admin:  # what the reap-vms deployment does every minute, here every quarter second
            admin.post("/admin/reap").raise_for_status()
        vm = vms_by_id(allocator)[idle]
        return vm if vm["reboots"] == 1 else None

    vm = wait_until(recycled, block.limits.silent_after + 15, "the reaper to reboot the silent VM")
    assert time.monotonic() - killed_at < block.limits.silent_after + 10
    assert vm["state"] in ("initializing", "available") and "silent" in vm["state_reason"]
    wait_until(lambda: vms_by_id(allocator)[idle]["state"] == "available", 60, "the rebooted VM to register")
    assert vms_by_id(allocator)[idle]["provider_ref"]["pid"] != pids[idle]
    assert vms_by_id(allocator)[held["id"]]["state"] == "in_use"  # the healthy VM was left alone
