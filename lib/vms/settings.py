"""Configuration of VM allocation (mirrored by the ``VmAllocation`` block).

One model holds everything an allocator, a flow or the CLI needs: which
database, which provisioner and its settings, and the limits the reaper and
clients keep. The defaults are LabLink's measured ones (GPU check every 20 s,
heartbeat every 30 s, sweep every 60 s, reboot or fail after 25 minutes stuck
initializing or 3 minutes silent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class VmLimits(BaseModel):
    """Timings of clients and of the reaper (seconds)."""

    gpu_check_interval: float = Field(20.0, gt=0, description="Seconds between GPU checks on each VM.")
    heartbeat_interval: float = Field(30.0, gt=0, description="Seconds between a client's heartbeats.")
    silent_after: float = Field(180.0, gt=0, description="A VM with no heartbeat for this long is rebooted or failed.")
    stuck_after: float = Field(1500.0, gt=0, description="A VM initializing for this long is rebooted or failed.")
    max_reboots: int = Field(1, ge=0, description="Reboots the reaper tries on a VM before it marks it failed.")
    reap_interval: float = Field(60.0, gt=0, description="Seconds between reaper sweeps (the deployment's interval).")


SessionIsolation = Literal["auto", "systemd", "cgroup"]


class TokenLifetimes(BaseModel):
    """How long a bearer token is accepted after it is issued (days); revocation ends one sooner."""

    user_days: float = Field(90.0, gt=0, description="Days a user token lives (a user asks an admin for a new one).")
    admin_days: float = Field(30.0, gt=0, description="Days an admin token lives (the allocator renews its own).")
    client_days: float | None = Field(
        None, gt=0, description="Days a VM's client token lives; empty: as long as its VM (revoked at reboot/destroy)."
    )


class LocalProvisionerSettings(BaseModel):
    """VMs that are client processes on this machine (tests, demo, a single workstation)."""

    root: Path | None = Field(
        None, description="Folder for each local VM's work folder and log; empty: $LABPIPE_HOME/vms/local."
    )
    python: str | None = Field(None, description="Python interpreter running the client; empty: this one.")
    session_account: str = Field(
        "labpipe-vm",
        description="Unprivileged account users' commands run as (`labpipe vms session-account` makes it).",
    )
    session_root: Path | None = Field(
        None,
        description="Folder holding each local VM's session folder, which the session account must be able to "
        "reach; empty: inside each VM's folder.",
    )
    session_isolation: SessionIsolation = Field(
        "auto", description="How a session is held and killed whole: 'systemd' scope, 'cgroup' v2 folder, or 'auto'."
    )
    cgroup_parent: Path | None = Field(
        None, description="cgroup v2 folder the session cgroups go under; empty: the client's own cgroup."
    )


class OpenTofuSettings(BaseModel):
    """VMs made by OpenTofu from the module in infra/opentofu/<flavor>."""

    flavor: str = Field(
        "aws", description="Sub-folder of the module: 'aws' (EC2 GPU instances) or 'render' (offline check)."
    )
    module_root: Path | None = Field(
        None, description="Folder holding the flavors; empty: infra/opentofu in the project."
    )
    workdir: Path | None = Field(
        None, description="Where the module is rendered and its state kept; empty: $LABPIPE_HOME/vms/tofu."
    )
    binary: str | None = Field(
        None, description="tofu (or terraform) program; empty: the first of tofu, terraform on PATH."
    )
    variables: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="Module variables (region, instance_type, image, key name, ...)."
    )
    timeout: float = Field(1800.0, gt=0, description="Seconds one tofu command may take.")


class AllocatorSettings(BaseModel):
    """Where VM state lives, how VMs are made, and the limits everyone keeps."""

    database_url: SecretStr | None = Field(
        None,
        description="postgresql://... for the VM tables; empty: the lab database (embedded PostgreSQL by default).",
    )
    schema_name: str | None = Field(None, description="PostgreSQL schema of the VM tables; empty: <schema_prefix>_vms.")
    allocator_url: str = Field("http://127.0.0.1:8765", description="URL the VM clients reach the allocator at.")
    provisioner: Literal["local", "opentofu"] = Field("local", description="Which provisioner makes and destroys VMs.")
    local: LocalProvisionerSettings = Field(
        default_factory=LocalProvisionerSettings, description="Settings of the local provisioner."
    )
    opentofu: OpenTofuSettings = Field(
        default_factory=OpenTofuSettings, description="Settings of the OpenTofu provisioner."
    )
    limits: VmLimits = Field(
        default_factory=VmLimits, description="Client intervals and the reaper's limits (seconds)."
    )
    pool_size: int = Field(10, ge=1, le=200, description="Database connections the allocator holds at most.")
    pool_wait: float = Field(10.0, gt=0, description="Seconds a request waits for a free connection before a 503.")
    max_vms_per_user: int = Field(1, ge=1, description="VMs one user may hold at once.")
    token_lifetimes: TokenLifetimes = Field(
        default_factory=TokenLifetimes, description="How long user, admin and client tokens are accepted."
    )
