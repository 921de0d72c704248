"""Users' sessions on a VM: an unprivileged account, a cgroup killed whole at release, no way to the client's secrets.

Real local VM clients (the local provisioner's processes) run real user commands
as a throw-away account made for the test run (``sessions`` fixture). Which
containment ran (systemd scope or a cgroup v2 folder) is chosen at run time; on
this machine PID 1 is not systemd, so it is the cgroup v2 path.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
from pathlib import Path

import pytest
from labpipe.vms.local import LocalProvisioner
from labpipe.vms.store import NewVm


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _with_marker(marker: str) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and marker in _cmdline(int(p.name))]


def _uids(pid: int) -> set[int]:
    """Real, effective, saved and filesystem uid of ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return {int(x) for x in line.split()[1:]}
    raise AssertionError(f"no Uid line for {pid}")


def _cgroup2(pid: int) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    return ""


DETACH = r"""
import json, os, signal, subprocess, sys, time
marker = sys.argv[1]
sleeper = subprocess.Popen(["setsid", "sleep", marker])        # its own session: killpg of ours misses it
if os.fork() == 0:                                            # a classic double-forked daemon
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)        # deaf to a polite stop, and to its terminal
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        os.execvp("sleep", ["sleep", marker])
    os._exit(0)
time.sleep(0.5)
with open("started.json", "w") as out:
    json.dump({"uid": os.getuid(), "euid": os.geteuid()}, out)
time.sleep(1000)
"""


def test_a_released_session_leaves_no_process_behind_and_never_ran_as_root(allocator, local_vms, sessions, until):
    sessions.require()
    vm_id, _ = local_vms(2)
    marker = f"{1000 + random.randint(1, 10**6) / 10**7:.7f}"  # a sleep length no other process on earth uses
    ada = allocator.store.issue_token("user", email="ada@lab.org")
    with allocator.http(ada) as http:
        granted = http.post("/vms/request", json={"email": "ada@lab.org", "command": ["python3", "-c", DETACH, marker]})
    assert granted.status_code == 200 and granted.json()["vm"]["id"] == vm_id

    def all_three_running():
        pids = _with_marker(marker)
        sleeps = [p for p in pids if _cmdline(p)[0] == "sleep"]
        return pids if len(sleeps) == 2 and len(pids) >= 3 else None

    pids = until(all_three_running, 30, what="the session's python, its setsid sleep and its daemon")
    client_pid = allocator.store.get(vm_id).provider_ref["pid"]
    for pid in pids:
        assert _uids(pid) == {sessions.uid}, f"{_cmdline(pid)} runs with uids {_uids(pid)}"  # never root, never mixed
    groups = {_cgroup2(pid) for pid in pids}
    assert len(groups) == 1 and groups != {_cgroup2(client_pid)}  # one cgroup of its own, not the client's

    with allocator.http(ada) as http:
        assert http.post(f"/vms/{vm_id}/release").status_code == 200
    until(lambda: not _with_marker(marker), 30, what="every process of the released session to be gone")
    assert not any(Path(f"/proc/{pid}").exists() and _cmdline(pid) and marker in _cmdline(pid) for pid in pids)


PROBE = r"""
import json, os, sys
token_file, client_pid, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
seen = {"uid": os.getuid(), "env": dict(os.environ)}
for name, path in [("token_file", token_file), ("client_environ", f"/proc/{client_pid}/environ"),
                   ("allocator_secret", secret)]:
    try:
        with open(path, "rb") as handle:
            seen[name] = "read: " + handle.read().decode(errors="replace")
    except OSError as exc:
        seen[name] = type(exc).__name__
try:
    os.kill(client_pid, 0)
    seen["signal_client"] = "allowed"
except OSError as exc:
    seen["signal_client"] = type(exc).__name__
with open("probe.json", "w") as out:
    json.dump(seen, out)
"""


def test_the_session_cannot_read_the_client_token_or_the_allocators_secrets(allocator, local_vms, sessions, until):
    sessions.require()
    (vm_id,) = local_vms(1)
    ref = allocator.store.get(vm_id).provider_ref
    token_file = Path(ref.get("token_file") or Path(ref["folder"]) / "secret" / "client-token")
    # a secret of the allocator's account (as $LABPIPE_HOME/vms/admin-token is) in a folder anyone can traverse
    open_folder = Path(sessions.root) / f"allocator-{vm_id}-{random.randint(0, 10**9)}"
    open_folder.mkdir(mode=0o755)
    secret = open_folder / "admin-token"
    secret.write_text("lpa_allocator-secret\n")
    secret.chmod(0o600)
    try:
        ada = allocator.store.issue_token("user", email="ada@lab.org")
        command = ["python3", "-c", PROBE, str(token_file), str(ref["pid"]), str(secret)]
        with allocator.http(ada) as http:
            assert http.post("/vms/request", json={"email": "ada@lab.org", "command": command}).status_code == 200
        until(lambda: allocator.store.get(vm_id).command_state == "exited:0", 30, what="the probe to finish")
        folder = Path(allocator.store.get(vm_id).provider_ref.get("session_folder") or Path(ref["folder"]) / "session")
        seen = json.loads((folder / "probe.json").read_text())
    finally:
        secret.unlink()
        open_folder.rmdir()

    assert seen["uid"] == sessions.uid
    assert seen["token_file"] == "PermissionError"  # the client's token: 0600 root's, in a 0700 folder
    assert seen["client_environ"] == "PermissionError"
    assert seen["allocator_secret"] == "PermissionError"
    assert seen["signal_client"] == "PermissionError"  # the session cannot stop or trace its client
    assert not any("lpc_" in value or "lpa_" in value for value in seen["env"].values())
    assert not any(key.startswith(("LABPIPE_VMS_TOKEN", "PREFECT_", "PG")) for key in seen["env"])
    mode = token_file.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == os.geteuid()
    assert stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    assert token_file.read_text().startswith("lpc_")


@pytest.mark.parametrize("hostname", ["../escaped", "..", "vm/../../escaped", "vm-0001\nx", " vm-0001", ""])
def test_hostile_vm_names_never_leave_the_local_root(tmp_path, hostname):
    root = tmp_path / "local-vms"
    victim = tmp_path / "escaped"
    victim.mkdir()
    (victim / "keep.txt").write_text("data")
    provisioner = LocalProvisioner(root)
    made = provisioner.create([NewVm(1, hostname, "lpc_x", [])], "http://127.0.0.1:1")
    if isinstance(made[1], dict):  # it started a client (the defect): stop it before failing
        os.killpg(made[1]["pid"], signal.SIGKILL)
    assert isinstance(made[1], Exception) and "hostname" in str(made[1])
    assert provisioner.destroy([{"id": 1, "hostname": hostname, "provider_ref": {}}])[1] is not None
    with pytest.raises(Exception, match="hostname"):
        provisioner.reboot({"id": 1, "hostname": hostname, "provider_ref": {}}, "lpc_y", "http://127.0.0.1:1")
    assert (victim / "keep.txt").read_text() == "data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["escaped"] + (["local-vms"] if root.exists() else [])
    assert not root.exists() or not any(root.iterdir())


ENTERED = r"""
import json, os
try:
    os.setuid(0)
    back_to_root = True
except PermissionError:
    back_to_root = False
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
print(json.dumps({"uids": os.getresuid(), "gids": os.getresgid(), "groups": os.getgroups(),
                  "no_new_privs": status["NoNewPrivs"].strip(), "back_to_root": back_to_root,
                  "umask": os.umask(0)}))
"""


def test_entering_a_session_drops_root_for_good(sessions, tmp_path):
    import subprocess

    from labpipe.vms.session import SessionAccount, enter_argv

    sessions.require()
    account = SessionAccount.resolve(sessions.account)
    done = subprocess.run(enter_argv(account, ["python3", "-c", ENTERED]), capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["uids"] == [account.uid] * 3 and seen["gids"] == [account.gid] * 3
    assert seen["groups"] == [account.gid]  # the account's own groups (useradd --user-group: its own), never 0
    assert seen["back_to_root"] is False and seen["no_new_privs"] == "1"  # setuid programs cannot lift it again
    assert seen["umask"] == 0o077

    root = SessionAccount("root", 0, 0)  # what resolve() refuses; the entry refuses it on its own too
    refused = subprocess.run(enter_argv(root, ["id"]), capture_output=True, text=True)
    assert refused.returncode == 125 and "root" in refused.stderr
    with pytest.raises(Exception, match="never run as root"):
        SessionAccount.resolve("root")
