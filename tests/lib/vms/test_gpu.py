"""The GPU check: an honest "no GPU" on this machine; nvidia-smi output parsed where a GPU exists.

This machine has no GPU, so the nvidia-smi cases run a stand-in script that
prints what nvidia-smi prints on a GPU host (or fails as it does when a GPU
falls off the bus); that stand-in is the only fake here, and it stands for the
GPU, which cannot run on this machine.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from labpipe.vms.gpu import check_gpu, parse_nvidia_smi


def stand_in(tmp_path: Path, script: str) -> str:
    path = tmp_path / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host has nvidia-smi; the no-GPU case is moot")
def test_this_host_reports_no_gpu_honestly():
    facts = check_gpu()
    assert facts.present is False and facts.healthy is True
    assert "no GPU" in facts.detail


def test_two_gpus_parsed(tmp_path):
    smi = stand_in(
        tmp_path, 'echo "NVIDIA A100-SXM4-40GB, 40960, 1024, 37, 41"\necho "NVIDIA A100-SXM4-40GB, 40960, 0, 0, 35"\n'
    )
    facts = check_gpu(smi)
    assert (facts.present, facts.healthy, facts.count) == (True, True, 2)
    assert facts.name == "NVIDIA A100-SXM4-40GB" and facts.memory_total_mb == 40960 and facts.memory_used_mb == 1024
    assert facts.utilization_pct == 37 and facts.temperature_c == 41


def test_a_gpu_that_stops_answering_is_unhealthy(tmp_path):
    smi = stand_in(
        tmp_path, 'echo "Unable to determine the device handle for GPU0000:00:1E.0: GPU is lost." >&2\nexit 15\n'
    )
    facts = check_gpu(smi)
    assert facts.present is True and facts.healthy is False and "GPU is lost" in facts.detail


def test_no_devices_is_absent_not_broken(tmp_path):
    smi = stand_in(tmp_path, 'echo "No devices were found"\nexit 6\n')
    facts = check_gpu(smi)
    assert facts.present is False and facts.healthy is True


def test_unsupported_fields_and_garbage():
    facts = parse_nvidia_smi("Tesla K80, 11441, [N/A], [Not Supported], 30\n")
    assert facts.memory_used_mb is None and facts.utilization_pct is None and facts.memory_total_mb == 11441
    assert parse_nvidia_smi("garbage").healthy is False
