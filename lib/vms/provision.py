"""Provisioners: one interface, chosen by the ``provisioner`` field of the VM allocation settings.

``LocalProvisioner`` (``labpipe.vms.local``) makes "VMs" that are real client
processes on this machine; ``OpenTofuProvisioner`` (``labpipe.vms.opentofu``)
renders the module in ``infra/opentofu/<flavor>`` and runs tofu. Both receive
each VM's client token from the allocator's database and hand it to the client
out of band (a 0600 file in a 0700 folder), never on a command line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from labpipe.config import get_settings
from labpipe.errors import ConfigError, ToolError
from labpipe.vms.settings import AllocatorSettings
from labpipe.vms.store import NewVm


class ProvisionFailure(ToolError):
    """One VM could not be made, destroyed or rebooted (the others go on); ``subject`` names the VM."""


class Provisioner(ABC):
    """Makes, reboots and destroys VMs whose client registers with ``allocator_url``."""

    name: str

    @abstractmethod
    def create(self, vms: list[NewVm], allocator_url: str) -> dict[int, dict | Exception]:
        """Start each VM; per VM id, its provider reference (stored in the VM row) or the error."""

    @abstractmethod
    def destroy(self, rows: list[dict]) -> dict[int, Exception | None]:
        """Take VMs down (rows of the VM table); per VM id, None or the error. Gone already is fine."""

    @abstractmethod
    def reboot(self, row: dict, client_token: str, allocator_url: str) -> dict:
        """Restart one VM with a new client token; returns its new provider reference."""

    def describe(self) -> str:
        return self.name


def make_provisioner(settings: AllocatorSettings, name: str | None = None, home: Path | None = None) -> Provisioner:
    """The provisioner called ``name`` (default: the one the settings choose), configured from them."""
    name = name or settings.provisioner
    home = Path(home or get_settings().home)
    limits = settings.limits
    if name == "local":
        from labpipe.vms.local import LocalProvisioner

        return LocalProvisioner(
            settings.local.root or home / "vms" / "local",
            python=settings.local.python,
            gpu_interval=limits.gpu_check_interval,
            heartbeat_interval=limits.heartbeat_interval,
            sessions=settings.local,
        )
    if name == "opentofu":
        from labpipe.vms.opentofu import OpenTofuProvisioner

        return OpenTofuProvisioner(settings.opentofu, home=home, limits=limits)
    raise ConfigError(name, "unknown provisioner", "use 'local' or 'opentofu'")
