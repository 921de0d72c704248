"""Real VM clients (local provisioner processes) against a real allocator: register, beat, run, reap."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from labpipe.vms.lifecycle import reap
from labpipe.vms.local import _alive
from labpipe.vms.models import VmState


def test_local_vms_register_beat_and_run_the_users_command_as_arguments(allocator, local_vms, until, tmp_path):
    vm_id, other = local_vms(2, command=["echo", "default"])
    vm = allocator.store.get(vm_id)
    assert vm.address == "127.0.0.1" and vm.gpu_present is False and "no GPU" in vm.gpu_detail
    first_beat = vm.last_heartbeat
    until(lambda: allocator.store.get(vm_id).last_heartbeat > first_beat, 60, what="a heartbeat")

    marker = tmp_path / "pwned"
    script = "import json, sys, pathlib; pathlib.Path('args.json').write_text(json.dumps(sys.argv[1:]))"
    hostile = [f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`", f"| touch {marker}", "&&", "*"]
    user = allocator.store.issue_token("user", email="ada@lab.org")
    with allocator.http(user) as ada:
        granted = ada.post(
            "/vms/request", json={"email": "ada@lab.org", "command": ["python3", "-c", script, *hostile]}
        )
    assert granted.json()["vm"]["id"] == vm_id
    ref = allocator.store.get(vm_id).provider_ref
    session = Path(ref.get("session_folder") or Path(ref["folder"]) / "session")
    until(lambda: allocator.store.get(vm_id).command_state == "exited:0", 90, what="the user's command to finish")
    assert json.loads((session / "args.json").read_text()) == hostile  # every argument arrived verbatim
    assert not marker.exists()  # and none of them ran as shell syntax

    with allocator.http(user) as ada:
        assert ada.post(f"/vms/{vm_id}/release").status_code == 200
    until(lambda: not session.exists(), 60, what="the released session to be wiped")
    assert allocator.store.get(other).state == VmState.available


def test_a_killed_client_is_rebooted_then_failed_by_the_reaper(allocator, local_vms, until):
    settings = allocator.settings  # silent_after 4 s, one reboot allowed
    idle, held = local_vms(2)
    user = allocator.store.issue_token("user", email="ada@lab.org")
    with allocator.http(user) as ada:
        assert ada.post("/vms/request", json={"email": "ada@lab.org"}).json()["vm"]["id"] == idle
    idle, held = held, idle  # the lowest id was claimed
    old = {vm.id: vm for vm in allocator.store.list(ids=[idle, held])}
    old_token_vm = allocator.store.get(idle)
    for vm in old.values():
        os.kill(vm.provider_ref["pid"], signal.SIGKILL)

    def swept():
        report = reap(allocator.store, settings, allocator_url=allocator.url)
        return report if report.rebooted or report.failed else None

    report = until(swept, settings.limits.silent_after + 10, interval=0.5, what="the reaper to act")
    acted = {r["id"] for r in report.rebooted} | {r["id"] for r in report.failed}
    if acted != {idle, held}:  # the two went silent a moment apart: one more sweep catches the other
        report2 = until(swept, 10, interval=0.5, what="the second VM to be reaped")
        report.rebooted += report2.rebooted
        report.failed += report2.failed
    assert [r["id"] for r in report.failed] == [held]  # in use: failed, not rebooted under its user
    assert allocator.store.get(held).state == VmState.failed
    assert [r["id"] for r in report.rebooted] == [idle]
    until(lambda: allocator.store.get(idle).state == VmState.available, 30, what="the rebooted VM to register")
    rebooted = allocator.store.get(idle)
    assert rebooted.reboots == 1 and rebooted.provider_ref["pid"] != old_token_vm.provider_ref["pid"]

    os.kill(rebooted.provider_ref["pid"], signal.SIGKILL)  # silent again: no reboot left
    report = until(swept, settings.limits.silent_after + 10, interval=0.5, what="the second sweep")
    assert [r["id"] for r in report.failed] == [idle] and not report.rebooted
    assert allocator.store.get(idle).state == VmState.failed


def test_destroy_stops_the_clients(allocator, local_vms):
    ids = local_vms(2)
    pids = [vm.provider_ref["pid"] for vm in allocator.store.list(ids=ids)]
    with allocator.http(allocator.admin) as admin:
        job = admin.post("/admin/vms/destroy", json={"ids": ids}).json()["job"]
    report = allocator.launcher.result(job, timeout=60)
    assert report["destroyed"] == ids
    assert {vm.state for vm in allocator.store.list(ids=ids)} == {VmState.destroyed}
    assert not any(_alive(pid) for pid in pids)
