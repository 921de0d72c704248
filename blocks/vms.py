"""The VM allocation block: provisioner choice and its settings, limits, database, allocator URL."""

from __future__ import annotations

from labpipe.blocks.resolve import resolve
from labpipe.vms.settings import AllocatorSettings
from prefect.blocks.core import Block


class VmAllocation(Block, AllocatorSettings):
    """Which provisioner makes VMs (local processes or OpenTofu), the limits the reaper keeps, and where state lives."""

    _block_type_name = "labpipe vm allocation"
    _block_type_slug = "labpipe-vm-allocation"
    _description = (
        "VM allocation (LabLink): the provisioner ('local' client processes or 'opentofu' with a module flavor), "
        "heartbeat and GPU-check intervals, the reaper's silent/stuck limits, the allocator URL clients use, "
        "and the PostgreSQL database of the VM tables (empty: the lab database)."
    )
    _code_example = """
    from labpipe.blocks.vms import VmAllocation
    vms = VmAllocation.load("BLOCK_NAME")
    print(vms.provisioner, vms.limits.silent_after)
    """


def vm_settings(name: str | None = "default") -> AllocatorSettings:
    """The ``VmAllocation`` document ``name``, or the defaults (local provisioner, LabLink's limits)."""
    return resolve(VmAllocation, name, AllocatorSettings())


__all__ = ["VmAllocation", "vm_settings"]
