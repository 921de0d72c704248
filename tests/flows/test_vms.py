"""The VM flows as Prefect runs (test harness server): create, idempotent re-create, reap, destroy, events.

The flows read a real ``VmAllocation`` block document saved on the harness
server; VMs are real local client processes registering with a real allocator.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from labpipe.flows import vms as vm_flows
from labpipe.vms.local import _alive
from labpipe.vms.models import VmState
from labpipe.vms.server import BackgroundAllocator
from labpipe.vms.settings import LocalProvisionerSettings, VmLimits
from labpipe.vms.store import VmStore


@pytest.fixture
def vm_block(embedded_target, tmp_path):
    """A saved VmAllocation block on the embedded PostgreSQL, with small limits, and an allocator for it."""
    from labpipe.blocks.vms import VmAllocation

    name = f"test-{uuid.uuid4().hex[:8]}"
    block = VmAllocation(
        database_url=embedded_target.url,
        schema_name=f"t{uuid.uuid4().hex[:10]}_vms",
        local=LocalProvisionerSettings(root=tmp_path / "local-vms"),
        limits=VmLimits(gpu_check_interval=0.5, heartbeat_interval=0.5, silent_after=3.0, stuck_after=30.0),
    )
    store = VmStore.open(block)
    allocator = BackgroundAllocator(store, block)
    block.allocator_url = allocator.url
    block.save(name, overwrite=True)
    yield name, store
    live = [vm.id for vm in store.list() if vm.state != VmState.destroyed]
    if live:
        vm_flows.destroy_vms(ids=live, vm_block=name)
    allocator.close()
    store.drop_schema()
    store.close()


def test_create_reap_destroy_flows(vm_block):
    name, store = vm_block
    result = vm_flows.create_vms(count=2, request_key="flow-test", wait_seconds=60, vm_block=name)
    assert len(result["created"]) == 2 and set(result["states"].values()) == {"available"}
    again = vm_flows.create_vms(count=2, request_key="flow-test", wait_seconds=5, vm_block=name)
    assert again["created"] == [] and len(store.list()) == 2  # a rerun makes no more VMs

    victim = store.get(result["created"][0])
    os.kill(victim.provider_ref["pid"], signal.SIGKILL)
    time.sleep(3.5)
    reaped = vm_flows.reap_vms(vm_block=name)
    assert [r["id"] for r in reaped["rebooted"]] == [victim.id]
    assert store.get(victim.id).reboots == 1

    pids = [vm.provider_ref["pid"] for vm in store.list()]
    destroyed = vm_flows.destroy_vms(states=["available", "initializing", "in_use", "failed"], vm_block=name)
    assert sorted(destroyed["destroyed"]) == sorted(result["created"])
    assert {vm.state for vm in store.list()} == {VmState.destroyed}
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in pids)


def test_create_summary_artifact(vm_block):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    name, _ = vm_block
    vm_flows.create_vms(count=1, request_key="artifact-test", wait_seconds=60, vm_block=name)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["vms-create"])))
    latest = max(artifacts, key=lambda a: a.created)
    assert "artifact-test" in latest.data and "available" in latest.data and "data:image/png;base64," in latest.data


def test_vm_changes_become_prefect_events():
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    hostname = f"vm-{uuid.uuid4().hex[:6]}"
    vm_flows.emit_vm_event({"id": 41, "hostname": hostname, "op": "UPDATE", "state": "in_use", "owner": "a@lab.org"})
    vm_flows.emit_vm_event({"op": "resync"})  # not a VM change: no event
    EventsWorker.drain_all()
    wanted = EventFilter(
        event=EventNameFilter(prefix=["labpipe.vm."]),
        resource=EventResourceFilter(id=[f"labpipe.vm.{hostname}"]),
    )
    deadline = time.monotonic() + 20
    events = []
    while not events and time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=wanted, limit=10).events
        time.sleep(0.5)
    assert [e.event for e in events] == ["labpipe.vm.in_use"]
    assert events[0].payload["owner"] == "a@lab.org" and events[0].resource["labpipe.vm.id"] == "41"
