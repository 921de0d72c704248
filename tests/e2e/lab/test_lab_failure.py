"""A bring-up that fails half-way leaves nothing behind, and says what failed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from labpipe.lab.netns import namespaces_permitted

WHY_NOT = namespaces_permitted() or (
    None if list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) else "Debian's PostgreSQL is not installed"
)
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(WHY_NOT is not None, reason=str(WHY_NOT))]


def test_a_failed_bring_up_tears_itself_down():
    from labpipe.lab.simulate import SimulatedLab

    prefix = f"lpx{os.getpid() % 10000}"
    lab = SimulatedLab(prefix=prefix, subnet="10.234.0")
    labpipe = str(Path(sys.executable).parent / "labpipe")
    try:  # one second is too short for the database or the Prefect server: up must fail, and clean up
        up = subprocess.run(
            [labpipe, "lab", "simulate", "up", "--prefix", prefix, "--subnet", "10.234.0", "--timeout", "1"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert up.returncode == 2, up.stdout + up.stderr
        assert "error: " in up.stderr and "not ready after 1 s" in up.stderr
        assert lab.net.existing() == []
        assert not lab.root.exists()
        assert not [ns for ns in os.listdir("/run/netns") if ns.startswith(f"{prefix}-")]
        leftovers = [
            pid for pid in os.listdir("/proc") if pid.isdigit() and _mentions(pid, str(lab.root))
        ]  # no process of the lab (their command lines name its folder)
        assert not leftovers
    finally:
        lab.down()


def _mentions(pid: str, text: str) -> bool:
    try:
        return text in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
