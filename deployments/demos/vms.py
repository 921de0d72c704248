"""VM allocation demo: an allocator, three local VMs made by the create-vms flow, a user given one.

The allocator runs as ``labpipe vms serve`` (Prefect launcher, Prefect events);
its admin endpoint starts the ``create-vms`` deployment on the cpu worker, whose
local provisioner starts three real VM clients. A user then requests a VM over
HTTP with a command to run there (as the unprivileged session account, made
here if missing), the reaper deployment sweeps once, and the
VMs are destroyed through the admin endpoint (the ``destroy-vms`` flow) and
the allocator stopped, so nothing is left running.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from labpipe.deployments.demo import DemoContext, DemoResult
from labpipe.procs import wait_until

ORDER = 70
COUNT = 3


def _wait_flow_run(flow_run_id: str, timeout: float):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if (run.state and run.state.is_final()) or time.monotonic() > deadline:
                return run
            time.sleep(1.0)


def run(ctx: DemoContext) -> DemoResult:
    from labpipe.blocks import database_settings
    from labpipe.blocks.vms import vm_settings
    from labpipe.errors import LabpipeError
    from labpipe.vms.models import Role
    from labpipe.vms.server import AllocatorProcess
    from labpipe.vms.session import ensure_session_account
    from labpipe.vms.store import VmStore

    lines: list[str] = []
    account = vm_settings().local.session_account
    try:  # users' commands run as this unprivileged account, never as the demo's
        made = ensure_session_account(account)[1]
        ctx.say(f"session account {account}: {'made (useradd --system)' if made else 'present'}")
    except LabpipeError as exc:
        ctx.say(f"session account {account} missing, users' commands will be refused: {exc}")
    allocator = AllocatorProcess(ctx.settings.home, launch="prefect", events=True).start(timeout=180)
    store = VmStore.open(vm_settings().model_copy(update={"pool_size": 2}), database_settings())
    admin = httpx.Client(
        base_url=allocator.url, headers={"Authorization": f"Bearer {allocator.admin_token}"}, timeout=60
    )
    ok = False
    try:
        ctx.say(f"allocator at {allocator.url} (web page there); admin token in {ctx.settings.home}/vms/admin-token")
        key = f"demo-{int(time.time())}"
        started = admin.post("/admin/vms", json={"count": COUNT, "request_key": key}).json()
        create_run = _wait_flow_run(started["flow_run_id"], 300)
        ctx.say(f"create-vms/default: {create_run.state.name if create_run.state else '?'} ({create_run.name})")
        ours = (
            wait_until(lambda: [vm for vm in store.list(request_key=key) if vm.state == "available"] or None, 120) or []
        )
        lines.append(f"{len(ours)}/{COUNT} local VMs registered by flow run {create_run.name}: "
                     + ", ".join(vm.hostname for vm in ours) + " (no GPU here, as the clients say)")  # fmt: skip

        user = store.issue_token(Role.user, email="ada@lab.org")
        command = ["python3", "-c", "import platform; print('hello from', platform.node(), 'on a labpipe VM')"]
        answer = httpx.post(
            f"{allocator.url}/vms/request",
            json={"email": "ada@lab.org", "command": command},
            headers={"Authorization": f"Bearer {user}"},
            timeout=30,
        ).json()
        vm = answer["vm"]
        ctx.say(f"ada@lab.org was given {vm['hostname']} at {vm['address']}")
        output_file = Path(store.get(vm["id"]).provider_ref["folder"]) / "session" / "command.log"
        output = wait_until(lambda: output_file.exists() and output_file.read_text().strip(), 60) or "(no output yet)"
        lines.append(f"allocation: {vm['hostname']} (VM {vm['id']}) -> ada@lab.org at {vm['address']}; "
                     f"her command printed: {output!r}")  # fmt: skip
        refused = httpx.post(
            f"{allocator.url}/vms/request", json={"email": "ada@lab.org"}, headers={"Authorization": f"Bearer {user}"}
        ).json()
        lines.append(f"asking again gives her the same VM (already_held={refused['already_held']}), not a second")

        reap_run = ctx.run("reap-vms/every-minute", {"allocator_url": allocator.url}, timeout=300)
        counts = store.counts()
        lines.append("VM states after a reaper sweep: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))

        destroy = admin.post("/admin/vms/destroy", json={"ids": [v.id for v in store.list(request_key=key)]}).json()
        destroy_run = _wait_flow_run(destroy["flow_run_id"], 300)
        gone = [v for v in store.list(request_key=key) if v.state == "destroyed"]
        lines.append(f"destroy-vms flow run {destroy_run.name}: {len(gone)}/{COUNT} VMs destroyed; allocator stopped")
        ok = (
            len(ours) == COUNT
            and answer.get("already_held") is False
            and "hello from" in output
            and all(r.state and r.state.is_completed() for r in (create_run, reap_run, destroy_run))
            and len(gone) == COUNT
        )
    finally:
        admin.close()
        allocator.stop()
        store.close()
    return DemoResult("vms", ok, lines)
