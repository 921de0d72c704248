"""What the VM flows do, as plain functions: create, destroy, reap, and wait for VMs to settle.

Flows (``labpipe.flows.vms``), the CLI and the allocator's inline launcher call
these, so the logic exists once. Each is idempotent: a repeated create with the
same request key makes no more VMs, a repeated destroy finishes what the first
left in ``destroying``, and the reaper re-checks every condition in the same
UPDATE that acts on it, so a heartbeat that arrives meanwhile wins.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from labpipe.vms.feed import listening
from labpipe.vms.models import Vm, VmState
from labpipe.vms.provision import Provisioner, make_provisioner
from labpipe.vms.settings import AllocatorSettings
from labpipe.vms.store import LIVE_STATES, VmStore

ProgressFn = Callable[[int, int], None]


@dataclass
class CreateReport:
    request_key: str
    created: list[int] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    states: dict[int, str] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"request_key": self.request_key, "created": self.created, "failed": self.failed, "states": self.states}


@dataclass
class DestroyReport:
    destroyed: list[int] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)

    def as_json(self) -> dict:
        return {"destroyed": self.destroyed, "failed": self.failed, "skipped": self.skipped}


@dataclass
class ReapReport:
    rebooted: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    raced: list[int] = field(default_factory=list)  # a heartbeat arrived between the look and the act
    stuck_destroying: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict:
        return {
            "rebooted": self.rebooted,
            "failed": self.failed,
            "raced": self.raced,
            "stuck_destroying": self.stuck_destroying,
            "counts": self.counts,
        }


def create_vms(
    store: VmStore,
    settings: AllocatorSettings,
    count: int,
    *,
    request_key: str,
    command: list[str] | None = None,
    allocator_url: str | None = None,
    provisioner: Provisioner | None = None,
    progress: ProgressFn | None = None,
) -> CreateReport:
    """Add ``count`` VMs under ``request_key`` and start them; VMs that fail to start are marked failed."""
    provisioner = provisioner or make_provisioner(settings)
    report = CreateReport(request_key)
    pending = store.add_vms(count, provisioner=provisioner.name, command=command, request_key=request_key)
    done = count - len(pending)
    if progress:
        progress(done, count)
    for vm in pending:  # one at a time, so progress moves and a failure stays with its VM
        result = provisioner.create([vm], allocator_url or settings.allocator_url)[vm.id]
        if isinstance(result, Exception):
            store.set_state(vm.id, VmState.failed, f"provisioning failed: {result}"[:2000])
            report.failed.append({"id": vm.id, "hostname": vm.hostname, "error": str(result)})
        else:
            store.set_provider_ref(vm.id, result)
            report.created.append(vm.id)
        done += 1
        if progress:
            progress(done, count)
    return report


def wait_settled(store: VmStore, ids: list[int], timeout: float) -> dict[int, str]:
    """Wait (on the change feed) until none of ``ids`` is initializing, or ``timeout``; returns their states."""
    deadline = time.monotonic() + timeout
    with listening(store.target, store.channel) as next_change:
        while True:
            states = {vm.id: vm.state.value for vm in store.list(ids=ids)}
            if not any(state == VmState.initializing for state in states.values()):
                return states
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return states
            next_change(min(remaining, 5.0))


def destroy_vms(
    store: VmStore,
    settings: AllocatorSettings,
    ids: list[int],
    *,
    reason: str = "destroyed by an admin",
    provisioners: dict[str, Provisioner] | None = None,
    progress: ProgressFn | None = None,
) -> DestroyReport:
    """Take VMs down through the provisioner that made each; a failure leaves it destroying for a retry."""
    provisioners = dict(provisioners or {})
    report = DestroyReport()
    rows = store.begin_destroy(ids, reason)
    report.skipped = sorted(set(ids) - {row["id"] for row in rows})
    for done, row in enumerate(rows, start=1):
        name = row["provisioner"]
        if name not in provisioners:
            provisioners[name] = make_provisioner(settings, name)
        error = provisioners[name].destroy([row])[row["id"]]
        if error is None:
            store.finish_destroy(row["id"], reason)
            report.destroyed.append(row["id"])
        else:
            store.set_state(
                row["id"],
                VmState.destroying,
                f"destroy failed, retry: {error}"[:2000],
                from_states=(VmState.destroying,),
            )
            report.failed.append({"id": row["id"], "hostname": row["hostname"], "error": str(error)})
        if progress:
            progress(done, len(rows))
    return report


def ids_in_states(store: VmStore, states: list[str]) -> list[int]:
    return [vm.id for vm in store.list(states=states)]


def reap(
    store: VmStore,
    settings: AllocatorSettings,
    *,
    allocator_url: str | None = None,
    provisioners: dict[str, Provisioner] | None = None,
) -> ReapReport:
    """One sweep: reboot or fail every VM silent or stuck past the limits."""
    provisioners = dict(provisioners or {})
    limits = settings.limits
    report = ReapReport()
    for action in store.stale(limits):
        vm = action.vm
        if action.action == "fail":
            if store.mark_failed(action, limits) is None:
                report.raced.append(vm.id)
            else:
                report.failed.append({"id": vm.id, "hostname": vm.hostname, "why": action.why})
            continue
        if store.mark_rebooting(action, limits) is None:
            report.raced.append(vm.id)
            continue
        try:
            name = vm.provisioner
            if name not in provisioners:
                provisioners[name] = make_provisioner(settings, name)
            token = store.rotate_client_token(vm.id)
            ref = provisioners[name].reboot(vm.model_dump(), token, allocator_url or settings.allocator_url)
            store.set_provider_ref(vm.id, ref)
            report.rebooted.append({"id": vm.id, "hostname": vm.hostname, "why": action.why})
        except Exception as exc:  # a reboot that fails fails the VM, and the sweep goes on
            store.set_state(vm.id, VmState.failed, f"reboot failed: {exc}"[:2000], from_states=LIVE_STATES)
            report.failed.append({"id": vm.id, "hostname": vm.hostname, "why": f"{action.why}; reboot failed: {exc}"})
    stuck = [v for v in store.list(states=[VmState.destroying]) if _age(v) > limits.stuck_after]
    report.stuck_destroying = [v.id for v in stuck]
    report.counts = store.counts()
    return report


def _age(vm: Vm) -> float:
    from datetime import UTC, datetime

    return (datetime.now(UTC) - vm.state_since).total_seconds() if vm.state_since else 0.0
