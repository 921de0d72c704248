"""VM allocation flows (LabLink): create VMs, destroy VMs, and reap silent or stuck ones every minute.

Deployments (deployments/prefect.yaml, pool ``cpu``): ``create-vms/default``,
``destroy-vms/default``, ``reap-vms/every-minute``. The allocator's admin
endpoints start the first two through ``PrefectLauncher``; every VM change is
also a Prefect event (``labpipe.vm.<state>``) through ``emit_vm_event``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from labpipe.blocks import database_settings
from labpipe.blocks.vms import vm_settings
from labpipe.db.settings import DatabaseSettings
from labpipe.errors import RunFailed
from labpipe.flows.common import Progress, logger, markdown_table, png_markdown, publish_markdown
from labpipe.vms import lifecycle
from labpipe.vms.models import VmState
from labpipe.vms.settings import AllocatorSettings
from labpipe.vms.store import VmStore
from prefect import flow, task
from prefect.runtime import flow_run

SUMMARY_COLUMNS = ["id", "hostname", "state", "owner", "gpu", "reason"]


@contextlib.contextmanager
def vm_store(settings: AllocatorSettings, db: DatabaseSettings) -> Iterator[tuple[VmStore, AllocatorSettings]]:
    """The VM tables (a small connection pool) and the allocation settings, closed after."""
    store = VmStore.open(settings.model_copy(update={"pool_size": 2}), db)
    try:
        yield store, settings
    finally:
        store.close()


def _rows(store: VmStore, ids: list[int]) -> list[dict]:
    return [
        {
            "id": vm.id,
            "hostname": vm.hostname,
            "state": vm.state.value,
            "owner": vm.owner or "",
            "gpu": (vm.gpu_name or "GPU") if vm.gpu_present else (vm.gpu_detail or "no GPU"),
            "reason": vm.state_reason,
        }
        for vm in store.list(ids=ids)
    ]


def _registration_figure(store: VmStore, ids: list[int]):
    """Seconds from creation to registration per VM (bars), the picture of a healthy create."""
    import matplotlib.pyplot as plt

    vms = store.list(ids=ids)
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(vms) + 1.2))
    waits = [(vm.registered_at - vm.created_at).total_seconds() if vm.registered_at else 0.0 for vm in vms]
    colors = ["#4caf50" if vm.registered_at else "#e57373" for vm in vms]
    ax.barh([vm.hostname for vm in vms], waits, color=colors)
    ax.set_xlabel("seconds from created to registered (red: not registered)")
    ax.invert_yaxis()
    return fig


@task(name="start-vms", task_run_name="start-{count}-vms-{request_key}")
def start_vms(
    count: int,
    request_key: str,
    command: list[str],
    allocator_url: str | None,
    vm: AllocatorSettings,
    db: DatabaseSettings,
) -> dict:
    with vm_store(vm, db) as (store, settings):
        report = lifecycle.create_vms(
            store,
            settings,
            count,
            request_key=request_key,
            command=command,
            allocator_url=allocator_url,
            progress=Progress("VMs started"),
        )
    for failure in report.failed:
        logger().warning("VM %s not started: %s", failure["hostname"], failure["error"])
    return report.as_json()


@task(name="wait-for-registration", task_run_name="wait-{timeout}s")
def wait_for_registration(
    ids: list[int], timeout: float, vm: AllocatorSettings, db: DatabaseSettings
) -> dict[int, str]:
    with vm_store(vm, db) as (store, _):
        return lifecycle.wait_settled(store, ids, timeout)


@flow(name="create-vms", flow_run_name="create-vms-{count}")
def create_vms(
    count: int = 1,
    command: list[str] | None = None,
    request_key: str | None = None,
    allocator_url: str | None = None,
    wait_seconds: float = 120.0,
    vm_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """Make VMs through the block's provisioner and wait until their clients register with the allocator.

    Args:
        count: How many VMs to make.
        command: The command each VM's client runs for its user (as arguments, never through a shell).
        request_key: Idempotency key: a rerun with the same key makes no second set of VMs.
        allocator_url: The allocator the clients register with; empty: the block's.
        wait_seconds: How long to wait for the clients to register before reporting them as failed.
        vm_block: Name of the labpipe vm allocation block (provisioner, limits, allocator URL).
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    config = vm_settings(vm_block), database_settings(db_block)  # resolved once for the run
    key = request_key or f"flow-{flow_run.get_id() or 'local'}"  # a retried run never makes more VMs
    report = start_vms(count, key, list(command or []), allocator_url, *config)
    with vm_store(*config) as (store, _):
        ids = [vm.id for vm in store.list(request_key=key)]  # a rerun also reports the VMs the first run made
    states = wait_for_registration(report["created"], wait_seconds, *config) if report["created"] else {}
    with vm_store(*config) as (store, _):
        rows = _rows(store, ids)
        figure = png_markdown(_registration_figure(store, ids), "time to registration") if ids else ""
    summary = (
        f"# create-vms `{key}`\n{len(report['created'])} started, {len(report['failed'])} failed to start; "
        f"states now: {sorted(states.values())}\n\n" + markdown_table(rows, SUMMARY_COLUMNS) + "\n" + figure
    )
    publish_markdown(summary, key="vms-create", description=f"created {count} VMs")
    return report | {"states": states}


@task(name="destroy-vms", task_run_name="destroy-{ids}")
def destroy_task(ids: list[int], reason: str, vm: AllocatorSettings, db: DatabaseSettings) -> dict:
    with vm_store(vm, db) as (store, settings):
        return lifecycle.destroy_vms(store, settings, ids, reason=reason, progress=Progress("VMs destroyed")).as_json()


@flow(name="destroy-vms", flow_run_name="destroy-vms")
def destroy_vms(
    ids: list[int] | None = None,
    states: list[VmState] | None = None,
    reason: str = "destroyed by an admin",
    vm_block: str | None = "default",
    db_block: str | None = "default",
) -> dict:
    """Take VMs down; a VM whose destroy fails stays destroying for a rerun.

    Args:
        ids: VM ids to destroy.
        states: Or every VM in these states (e.g. failed).
        reason: Recorded on each VM and in its event.
        vm_block: Name of the labpipe vm allocation block (provisioner, limits, allocator URL).
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    config = vm_settings(vm_block), database_settings(db_block)  # resolved once for the run
    with vm_store(*config) as (store, _):
        chosen = sorted(set(ids or []) | set(lifecycle.ids_in_states(store, states) if states else []))
    report = destroy_task(chosen, reason, *config) if chosen else {"destroyed": [], "failed": []}
    with vm_store(*config) as (store, _):
        rows = _rows(store, chosen)
    publish_markdown(
        f"# destroy-vms\n{len(report['destroyed'])} destroyed, {len(report['failed'])} failed\n\n"
        + markdown_table(rows, SUMMARY_COLUMNS),
        key="vms-destroy",
        description="VMs destroyed",
    )
    if report["failed"]:
        raise RunFailed("destroy-vms", f"{len(report['failed'])} VMs were not destroyed: {report['failed']}",
                        "they stay 'destroying'; run destroy-vms again")  # fmt: skip
    return report


@task(name="reap", task_run_name="reap")
def reap_task(allocator_url: str | None, vm: AllocatorSettings, db: DatabaseSettings) -> dict:
    with vm_store(vm, db) as (store, settings):
        return lifecycle.reap(store, settings, allocator_url=allocator_url).as_json()


@flow(name="reap-vms", flow_run_name="reap-vms")
def reap_vms(
    allocator_url: str | None = None, vm_block: str | None = "default", db_block: str | None = "default"
) -> dict:
    """One sweep: reboot or fail every VM silent or stuck initializing past the block's limits.

    Args:
        allocator_url: The allocator rebooted clients register with; empty: the block's.
        vm_block: Name of the labpipe vm allocation block (provisioner, limits, allocator URL).
        db_block: Name of the labpipe lab database block (the DataJoint server).
    """
    config = vm_settings(vm_block), database_settings(db_block)  # resolved once for the run
    report = reap_task(allocator_url, *config)
    acted = [{"action": "reboot", **r} for r in report["rebooted"]] + [
        {"action": "fail", **r} for r in report["failed"]
    ]
    for row in acted:
        logger().warning("VM %s: %s (%s)", row["hostname"], row["action"], row["why"])
    counts = ", ".join(f"{n} {state}" for state, n in report["counts"].items() if n) or "no VMs"
    publish_markdown(
        f"# VM reaper\n{counts}\n\n## acted on ({len(acted)})\n"
        + markdown_table(acted, ["action", "id", "hostname", "why"])
        + (f"\nStuck destroying: {report['stuck_destroying']}\n" if report["stuck_destroying"] else ""),
        key="vms-reaper",
        description="VM reaper sweep",
    )
    return report


# -- what the allocator uses from Prefect ------------------------------------------------------------


class PrefectLauncher:
    """Starts the create/destroy/reap deployments from the allocator's admin endpoints (returns at once)."""

    name = "prefect"

    def __init__(self, allocator_url: str | None = None, vm_block: str | None = "default") -> None:
        self.allocator_url, self.vm_block = allocator_url, vm_block

    def _run(self, deployment: str, parameters: dict) -> dict:
        from prefect.deployments import run_deployment

        run = run_deployment(deployment, parameters=parameters | {"vm_block": self.vm_block}, timeout=0)
        return {"launcher": self.name, "flow_run_id": str(run.id), "flow_run": run.name, "deployment": deployment}

    def create(self, count: int, command: list[str], request_key: str) -> dict:
        params = {"count": count, "command": command, "request_key": request_key, "allocator_url": self.allocator_url}
        return self._run("create-vms/default", params)

    def destroy(self, ids: list[int]) -> dict:
        return self._run("destroy-vms/default", {"ids": ids})

    def reap(self) -> dict:
        return self._run("reap-vms/every-minute", {"allocator_url": self.allocator_url})


def emit_vm_event(change: dict) -> None:
    """One Prefect event per VM change: ``labpipe.vm.<state>`` on resource ``labpipe.vm.<hostname>``."""
    from prefect.events import emit_event

    if not change.get("hostname"):
        return  # a feed resync, not a VM change
    emit_event(
        event=f"labpipe.vm.{change.get('state') or change.get('op', 'changed').lower()}",
        resource={
            "prefect.resource.id": f"labpipe.vm.{change['hostname']}",
            "prefect.resource.name": change["hostname"],
            "labpipe.vm.id": str(change.get("id")),
        },
        payload={k: v for k, v in change.items() if k != "hostname"},
    )
