"""VM states, records and the allocator's request bodies.

Request bodies reject unknown fields and wrong types, so a malformed request
gets a 422 naming the field at fault. Commands are argument lists: a string
where a list is expected is refused, never split or handed to a shell.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator


class VmState(StrEnum):
    initializing = "initializing"  # made by a provisioner, its client not registered yet
    available = "available"  # registered and healthy, nobody holds it
    in_use = "in_use"  # claimed by a user
    failed = "failed"  # silent, stuck or with a broken GPU; an admin destroys or the reaper rebooted it already
    destroying = "destroying"  # a destroy flow is taking it down
    destroyed = "destroyed"  # gone; the row stays for the record


class Role(StrEnum):
    user = "user"
    client = "client"
    admin = "admin"


# Loose on purpose (RFC 5322 is not what users type) but no spaces, quotes, shell metacharacters or control characters.
EMAIL_PATTERN = r"^[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}$"
HOSTNAME_PATTERN = r"^[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?$"
Email = Annotated[str, StringConstraints(pattern=EMAIL_PATTERN, max_length=254)]
Argument = Annotated[str, StringConstraints(max_length=4096)]
Command = Annotated[list[Argument], Field(max_length=256)]


def check_command(value: Any) -> Any:
    """An argument list: refuse a bare string, which someone would have to split (or give a shell)."""
    if isinstance(value, str):
        raise ValueError('must be a list of arguments such as ["python", "train.py"], not one string')
    if value is not None and isinstance(value, list) and value and not str(value[0]).strip():
        raise ValueError("the program (first argument) must not be empty")
    if isinstance(value, list) and any(isinstance(a, str) and "\x00" in a for a in value):
        raise ValueError("arguments must not contain NUL characters")
    return value


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VmRequest(Body):
    """``POST /vms/request``: a user asks for one VM."""

    email: Email = Field(description="The user the VM is for.")
    min_gpu_memory_mb: int = Field(0, ge=0, le=10_000_000, description="Only VMs with at least this much GPU memory.")
    require_gpu: bool = Field(False, description="Only VMs whose client saw a healthy GPU.")
    command: Command | None = Field(None, description="Program and arguments the VM runs for this user (no shell).")

    _command = field_validator("command", mode="before")(check_command)


class GpuFacts(Body):
    """What a client's GPU check saw."""

    present: bool
    healthy: bool
    source: str = Field("none", max_length=32)
    name: str | None = Field(None, max_length=200)
    count: int = Field(0, ge=0, le=64)
    memory_total_mb: int | None = Field(None, ge=0)
    memory_used_mb: int | None = Field(None, ge=0)
    utilization_pct: float | None = Field(None, ge=0, le=100)
    temperature_c: float | None = Field(None, ge=-50, le=200)
    detail: str = Field("", max_length=2000)


class Registration(Body):
    """``POST /vms/register``: a client announces itself when it boots."""

    address: str = Field(max_length=255, description="Where users reach this VM (IP address or DNS name).")
    connection: dict[str, str | int] = Field(
        default_factory=dict, description="How to connect (ssh port, desktop URL, ...)."
    )
    gpu: GpuFacts
    pid: int | None = Field(None, ge=1)
    client_version: str = Field("", max_length=64)


class Heartbeat(Body):
    """``POST /vms/{id}/heartbeat``: the client is alive; its GPU as last checked, its user's command."""

    status: str = Field("ok", pattern=r"^(ok|degraded|busy)$", description="ok, degraded or busy.")
    gpu: GpuFacts
    command_state: str | None = Field(None, max_length=64, description="started, exited:<code> or failed:<why>.")


class CreateVms(Body):
    """``POST /admin/vms``: make ``count`` VMs."""

    count: int = Field(ge=1, le=500)
    command: Command = Field(default_factory=list, description="Program the VMs run for their user by default.")
    request_key: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
        description="Repeat a create safely: the same key never makes more VMs.",
    )

    _command = field_validator("command", mode="before")(check_command)


class DestroyVms(Body):
    """``POST /admin/vms/destroy``: take VMs down by id, or every VM in some states."""

    ids: list[int] = Field(default_factory=list, max_length=1000)
    states: list[VmState] = Field(default_factory=list, description='E.g. ["failed"] destroys every failed VM.')


class TokenCreate(Body):
    """``POST /admin/tokens``: a new user or admin token."""

    role: Role
    email: Email | None = None
    lifetime_days: float | None = Field(
        None, gt=0, le=3650, description="Days until it expires; empty: the role's lifetime in the block."
    )
    label: str = Field("", max_length=200, description="What the token is for (shown by `labpipe vms token list`).")


class Vm(BaseModel):
    """One row of the VM table, as the API shows it."""

    id: int
    hostname: str
    state: VmState
    state_reason: str = ""
    owner: str | None = None
    address: str | None = None
    connection: dict = Field(default_factory=dict)
    command: list[str] = Field(default_factory=list)
    user_command: list[str] | None = None
    provisioner: str = ""
    gpu_present: bool | None = None
    gpu_healthy: bool | None = None
    gpu_name: str | None = None
    gpu_memory_mb: int | None = None
    gpu_detail: str | None = None
    reboots: int = 0
    provider_ref: dict = Field(default_factory=dict)
    command_state: str | None = None
    heartbeat_status: str | None = None
    client_pid: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    state_since: datetime | None = None
    registered_at: datetime | None = None
    last_heartbeat: datetime | None = None
    claimed_at: datetime | None = None
    released_at: datetime | None = None


EMAIL_ANYWHERE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def redact_emails(text: str | None, keep: str | None = None) -> str | None:
    """``text`` with every e-mail address but ``keep`` replaced by ``someone`` (reasons shown to users)."""
    if not text:
        return text
    return EMAIL_ANYWHERE.sub(lambda m: m.group(0) if keep and m.group(0) == keep else "someone", text)


def is_hostname(name: str) -> bool:
    return bool(re.match(HOSTNAME_PATTERN, name))


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback, which no other host can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
