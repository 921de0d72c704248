"""One simulated lab for every module of this folder (bring-up takes 30-60 s, `labpipe up` on main 30-80 s).

``lab`` brings it up with the command an engineer types and, after the folder's last test (failed or not), takes
it down with ``labpipe lab simulate down`` and checks that nothing is left: no namespace, no process, no folder
(the library's ``down`` runs again as a safety net). ``deployed`` is `labpipe up` on the main host, with the
lab's alerts going to receivers inside the lab (``inboxes``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from labpipe.lab.slurm import missing_slurm

from tests.e2e.lab.support import LABPIPE, PREFIX, SUBNET, WHY_NOT, Inboxes, in_lab, simulate


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _assert_torn_down(lab, pids: set[int]) -> None:
    assert lab.net.existing() == []
    assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(f"{PREFIX}-")]
    assert not lab.root.exists()
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)]
    assert not alive, f"still running after down: {alive}"
    status = simulate("status")
    assert status.returncode == 3 and "not up" in status.stdout


@pytest.fixture(scope="package")
def lab():
    from labpipe.lab.simulate import SimulatedLab

    if WHY_NOT:
        pytest.skip(WHY_NOT)
    lab = SimulatedLab(prefix=PREFIX, subnet=SUBNET)
    try:
        up = simulate("up", "--json", *([] if missing_slurm() else ["--slurm"]))  # with its one-node SLURM
        assert up.returncode == 0, up.stdout + up.stderr
        lab.brought_up = json.loads(up.stdout)
        print(f"simulated lab up: {lab.brought_up['bringup_seconds']} (seconds)")
        yield lab
        pids = {s["pid"] for s in lab.status()["services"].values() if s["pid"]}
        pids |= {p for ps in lab.net.pids().values() for p in ps}
        down = simulate("down", timeout=300)
        assert down.returncode == 0, down.stdout + down.stderr
        _assert_torn_down(lab, pids)
    finally:
        lab.down()  # after a clean `down` this finds nothing; after a failure it removes everything


@pytest.fixture(scope="package")
def inboxes(lab):
    """A webhook receiver and an SMTP server on main's loopback, where the Prefect server sends from."""
    boxes = Inboxes(lab).start()
    yield boxes
    boxes.stop()


LIFECYCLES = "ingest,radio,segmentation,backup"  # what the tests of this folder run


@pytest.fixture(scope="package")
def deployed(lab, inboxes):
    """`labpipe up --no-workers --pause-schedules` on the main host, after the lab's LabAlerts block names the
    receivers (so `up` creates the alert automations as a lab's operator would have them)."""
    alerts = {
        "email_to": ["oncall@lab.example"],
        "smtp": {"host": "127.0.0.1", "port": inboxes.smtp_port, "security": "none", "sender": "labpipe@lab.example"},
        "webhook_url": inboxes.webhook_url,
    }
    in_lab(lab, "main", "save-blocks", {"alerts": alerts})
    started = time.monotonic()
    lifecycles = {"LABPIPE_LIFECYCLES": LIFECYCLES}  # a lab without VMs, pose or training: fewer to deploy
    up = lab.run("main", [LABPIPE, "up", "--no-workers", "--pause-schedules"], env=lifecycles, timeout=900)
    assert up.returncode == 0, up.stdout + up.stderr
    lab.deployed_in = round(time.monotonic() - started, 1)
    print(f"labpipe up on main: {lab.deployed_in} s")
    return up.stdout
