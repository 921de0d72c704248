"""The GPU check a VM client runs every 20 s: NVML first, then nvidia-smi, else an honest "no GPU".

A GPU that was there and fails to answer (driver error, fallen off the bus,
nvidia-smi timing out) is reported present and unhealthy, which fails the VM;
a host that never had a GPU is reported absent and healthy, which is the truth
about this machine and about CPU-only VMs.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess

from labpipe.vms.models import GpuFacts

SMI_QUERY = "name,memory.total,memory.used,utilization.gpu,temperature.gpu"


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_nvidia_smi(output: str) -> GpuFacts:
    """Facts from ``nvidia-smi --query-gpu=<SMI_QUERY> --format=csv,noheader,nounits`` (one line per GPU)."""
    rows = [[cell.strip() for cell in line.split(",")] for line in output.strip().splitlines() if line.strip()]
    rows = [row for row in rows if len(row) >= 5]
    if not rows:
        return GpuFacts(present=True, healthy=False, source="nvidia-smi", detail=f"unreadable output: {output[:200]!r}")
    first = rows[0]
    total, used = _number(first[1]), _number(first[2])
    return GpuFacts(
        present=True,
        healthy=True,
        source="nvidia-smi",
        name=first[0],
        count=len(rows),
        memory_total_mb=int(total) if total is not None else None,
        memory_used_mb=int(used) if used is not None else None,
        utilization_pct=_number(first[3]),
        temperature_c=_number(first[4]),
        detail=f"{len(rows)} x {first[0]}",
    )


def _check_nvml() -> GpuFacts | None:
    """NVML through nvidia-ml-py; None when the library or the driver is absent (then nvidia-smi decides)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None  # no driver here: not the same as a broken GPU
    try:
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return GpuFacts(present=False, healthy=True, source="nvml", detail="NVML found no GPU")
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
        temperature = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        name = name.decode() if isinstance(name, bytes) else name
        return GpuFacts(
            present=True,
            healthy=True,
            source="nvml",
            name=name,
            count=count,
            memory_total_mb=int(memory.total // 2**20),
            memory_used_mb=int(memory.used // 2**20),
            utilization_pct=float(utilization.gpu),
            temperature_c=float(temperature),
            detail=f"{count} x {name}",
        )
    except pynvml.NVMLError as exc:  # the driver answers but the device does not: that is a broken GPU
        return GpuFacts(present=True, healthy=False, source="nvml", detail=f"NVML error: {exc}")
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _check_nvidia_smi(program: str) -> GpuFacts:
    cmd = [program, f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return GpuFacts(present=True, healthy=False, source="nvidia-smi", detail="nvidia-smi did not answer in 15 s")
    except OSError as exc:
        return GpuFacts(present=True, healthy=False, source="nvidia-smi", detail=f"nvidia-smi failed to start: {exc}")
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()[:500]
        if "No devices were found" in message:
            return GpuFacts(present=False, healthy=True, source="nvidia-smi", detail="nvidia-smi found no GPU")
        return GpuFacts(
            present=True, healthy=False, source="nvidia-smi", detail=f"nvidia-smi exit {result.returncode}: {message}"
        )
    return parse_nvidia_smi(result.stdout)


def check_gpu(nvidia_smi: str | None = None) -> GpuFacts:
    """This host's GPU: NVML, else nvidia-smi, else "no GPU" (never an exception)."""
    facts = _check_nvml()
    if facts is not None:
        return facts
    program = nvidia_smi or shutil.which("nvidia-smi")
    if program:
        return _check_nvidia_smi(program)
    return GpuFacts(
        present=False, healthy=True, source="none", detail="no GPU: neither NVML nor nvidia-smi on this host"
    )
