"""The OpenTofu provisioner: render ``infra/opentofu/<flavor>`` and run tofu init/plan/apply/destroy.

The set of VMs is one map variable (hostname -> vm_id) plus a sensitive map of
client tokens, kept in ``labpipe.auto.tfvars.json`` (mode 0600) beside the
state in the work folder. Creating VMs adds entries and applies; destroying
removes entries and applies (tofu destroys what left the map); a reboot applies
with ``-replace`` of that VM's instance. Every tofu call is an argument list run
without a shell, under a file lock (one tofu at a time per work folder), with
checkpoint calls off. ``terraform`` works as the binary too (same CLI).

The plan holds every variable (the client tokens) and a cloud provider's state
holds what it was given (user data with the token): the work folder is 0700, tofu
runs with umask 077, and every state, plan and vars file is made 0600 again
after each tofu command (state written by an older labpipe included).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from labpipe.errors import ConfigError, ToolError
from labpipe.files import atomic_path
from labpipe.vms.provision import Provisioner, ProvisionFailure
from labpipe.vms.settings import OpenTofuSettings, VmLimits
from labpipe.vms.store import NewVm

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VARS_FILE = "labpipe.auto.tfvars.json"
SECRET_FILES = ("*.tfstate", "*.tfstate.*", "*.tfplan", "*.tfvars.json", ".terraform/terraform.tfstate")
RESOURCE = {"aws": 'aws_instance.vm["{hostname}"]', "render": 'terraform_data.vm["{hostname}"]'}


def find_tofu(binary: str | None = None) -> str | None:
    """The tofu program: the configured one, else tofu, else terraform on PATH; None if none."""
    for candidate in [binary] if binary else ["tofu", "terraform"]:
        found = shutil.which(candidate) if candidate else None
        if found:
            return found
    return None


class OpenTofuProvisioner(Provisioner):
    name = "opentofu"

    def __init__(self, settings: OpenTofuSettings, *, home: Path, limits: VmLimits | None = None) -> None:
        self.settings = settings
        self.limits = limits or VmLimits()
        self.module_root = Path(settings.module_root or PROJECT_ROOT / "infra" / "opentofu")
        self.flavor = settings.flavor
        if not (self.module_root / self.flavor).is_dir():
            flavors = sorted(p.name for p in self.module_root.iterdir() if p.is_dir() and p.name != "modules")
            raise ConfigError(self.module_root / self.flavor, "no such OpenTofu flavor", f"use one of {flavors}")
        self.workdir = Path(settings.workdir or Path(home) / "vms" / "tofu") / self.flavor
        self.root = self.workdir / self.flavor  # mirrors infra/opentofu: <flavor>/ beside modules/

    def describe(self) -> str:
        return f"OpenTofu flavor {self.flavor!r} in {self.root}"

    # -- running tofu ---------------------------------------------------------------------------

    @property
    def binary(self) -> str:
        found = find_tofu(self.settings.binary)
        if not found:
            wanted = self.settings.binary or "tofu (or terraform)"
            raise ToolError(wanted, "not found on PATH", "install OpenTofu, or set the block's opentofu.binary")
        return found

    def run(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1", NO_COLOR="1")
        cmd = [self.binary, *args]
        try:
            result = subprocess.run(
                cmd, cwd=self.root, env=env, capture_output=True, text=True, timeout=self.settings.timeout, umask=0o077
            )
        except subprocess.TimeoutExpired as exc:
            raise ToolError(" ".join(cmd[:2]), f"took longer than {self.settings.timeout:g} s") from exc
        finally:
            self.tighten()
        if result.returncode != 0:
            raise ToolError(" ".join(cmd[:2]), f"exit {result.returncode}: {(result.stderr or result.stdout)[-3000:]}")
        return result

    def tighten(self) -> None:
        """The work folders 0700, every state, plan and vars file in them 0600 (they hold client tokens)."""
        for folder in (self.workdir, self.root, self.root / "terraform.tfstate.d"):
            if folder.is_dir():
                folder.chmod(0o700)
        for pattern in SECRET_FILES:
            for path in [*self.root.glob(pattern), *self.root.glob(f"terraform.tfstate.d/*/{pattern}")]:
                if path.is_file() and not path.is_symlink():
                    path.chmod(0o600)

    def _make_workdir(self) -> None:
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.workdir.chmod(0o700)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One tofu sequence at a time on this work folder (flows and the reaper may overlap)."""
        self._make_workdir()
        with open(self.workdir / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def render(self) -> Path:
        """Copy the flavor and the shared modules into the work folder (state and vars stay)."""
        self._make_workdir()
        for part in ("modules", self.flavor):
            source, target = self.module_root / part, self.workdir / part
            target.mkdir(parents=True, exist_ok=True)
            for old in target.rglob("*.tf"):
                old.unlink()  # a file removed from infra/ must not linger in the rendered copy
            shutil.copytree(
                source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*")
            )
        return self.root

    def init(self) -> None:
        self.render()
        self.run("init", "-input=false", "-no-color")

    def validate(self) -> dict:
        self.render()
        self.run("init", "-input=false", "-no-color", "-backend=false")
        return json.loads(self.run("validate", "-json", "-no-color").stdout)

    # -- the VM map -----------------------------------------------------------------------------

    def _read_vars(self) -> dict:
        path = self.root / VARS_FILE
        return json.loads(path.read_text()) if path.exists() else {"vms": {}, "client_tokens": {}}

    def _write_vars(self, data: dict, allocator_url: str | None) -> None:
        data = {**data, **self.settings.variables}
        if allocator_url:
            data["allocator_url"] = allocator_url
        data.setdefault("allocator_url", "http://127.0.0.1:8765")
        data["gpu_interval"] = self.limits.gpu_check_interval
        data["heartbeat_interval"] = self.limits.heartbeat_interval
        self._make_workdir()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with atomic_path(self.root / VARS_FILE) as tmp:  # holds client tokens: owner-only from the start
            fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)

    def plan(self, *extra: str) -> str:
        """Plan into ``labpipe.tfplan``; returns tofu's summary line."""
        out = self.run("plan", "-input=false", "-no-color", "-out=labpipe.tfplan", *extra).stdout
        lines = [line for line in out.splitlines() if line.startswith(("Plan:", "No changes"))]
        return lines[-1] if lines else ""

    def apply(self, *extra: str) -> dict:
        """Plan, apply that plan, and return the ``vms`` output (hostname -> vm_id, address, instance_id)."""
        self.init()
        self.plan(*extra)
        self.run("apply", "-input=false", "-no-color", "labpipe.tfplan")
        outputs = json.loads(self.run("output", "-json", "-no-color").stdout)
        return outputs.get("vms", {}).get("value", {})

    def resource(self, hostname: str) -> str:
        pattern = RESOURCE.get(self.flavor, RESOURCE["aws"])
        return pattern.format(hostname=hostname)

    # -- the interface --------------------------------------------------------------------------

    def create(self, vms: list[NewVm], allocator_url: str) -> dict[int, dict | Exception]:
        with self.locked():
            data = self._read_vars()
            for vm in vms:
                data["vms"][vm.hostname] = {"vm_id": vm.id}
                data["client_tokens"][vm.hostname] = vm.client_token
            self._write_vars(data, allocator_url)
            try:
                made = self.apply()
            except ToolError as exc:
                return {vm.id: ProvisionFailure(f"VM {vm.hostname!r}", str(exc)) for vm in vms}
        results: dict[int, dict | Exception] = {}
        for vm in vms:
            info = made.get(vm.hostname)
            if info is None:
                results[vm.id] = ProvisionFailure(f"VM {vm.hostname!r}", "not in tofu's outputs after apply")
            else:
                results[vm.id] = {"flavor": self.flavor, "resource": self.resource(vm.hostname), **info}
        return results

    def destroy(self, rows: list[dict]) -> dict[int, Exception | None]:
        with self.locked():
            data = self._read_vars()
            for row in rows:
                data["vms"].pop(row["hostname"], None)
                data["client_tokens"].pop(row["hostname"], None)
            self._write_vars(data, None)
            try:
                if data["vms"]:
                    self.apply()
                else:  # the last VM goes: tear down everything the module made (security group too)
                    self.init()
                    self.run("destroy", "-auto-approve", "-input=false", "-no-color")
            except ToolError as exc:
                return {row["id"]: ProvisionFailure(f"VM {row['hostname']!r}", str(exc)) for row in rows}
        return {row["id"]: None for row in rows}

    def reboot(self, row: dict, client_token: str, allocator_url: str) -> dict:
        with self.locked():
            data = self._read_vars()
            data["vms"][row["hostname"]] = {"vm_id": row["id"]}
            data["client_tokens"][row["hostname"]] = client_token
            self._write_vars(data, allocator_url)
            made = self.apply(f"-replace={self.resource(row['hostname'])}")
        info = made.get(row["hostname"], {})
        return {"flavor": self.flavor, "resource": self.resource(row["hostname"]), **info}
