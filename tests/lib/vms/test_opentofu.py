"""The OpenTofu provisioner and module: real tofu (or terraform) on the offline "render" flavor.

The "render" flavor needs no provider plugin, so init/validate/plan/apply/
destroy all run here for real. The "aws" flavor needs the hashicorp/aws plugin,
which this machine cannot download (no registry access): it is validated only
where a plugin cache holds it, and skipped with that reason otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from labpipe.errors import ConfigError, ToolError
from labpipe.vms.opentofu import PROJECT_ROOT, VARS_FILE, OpenTofuProvisioner, find_tofu
from labpipe.vms.settings import OpenTofuSettings
from labpipe.vms.store import NewVm

TOFU = find_tofu()
needs_tofu = pytest.mark.skipif(TOFU is None, reason="neither tofu nor terraform is installed on this machine")
MODULE = PROJECT_ROOT / "infra" / "opentofu"


def provisioner(tmp_path: Path, flavor: str = "render") -> OpenTofuProvisioner:
    return OpenTofuProvisioner(OpenTofuSettings(flavor=flavor, workdir=tmp_path / "tofu"), home=tmp_path)


@needs_tofu
def test_module_is_formatted():
    result = subprocess.run([TOFU, "fmt", "-check", "-recursive", str(MODULE)], capture_output=True, text=True)
    assert result.returncode == 0, f"unformatted: {result.stdout}"


@needs_tofu
def test_render_flavor_validates(tmp_path):
    report = provisioner(tmp_path).validate()
    assert report["valid"] is True, report


@needs_tofu
def test_create_reboot_destroy_through_tofu(tmp_path):
    tofu = provisioner(tmp_path)
    hostile_url = "http://127.0.0.1:8765/; touch /tmp/pwned #"
    vms = [NewVm(1, "vm-0001", "lpc_secret-one", []), NewVm(2, "vm-0002", "lpc_secret-two", [])]
    made = tofu.create(vms, hostile_url)
    assert set(made) == {1, 2} and all(isinstance(ref, dict) for ref in made.values()), made
    assert made[1]["resource"] == 'terraform_data.vm["vm-0001"]' and made[1]["vm_id"] == 1
    variables = tofu.root / VARS_FILE
    assert stat.S_IMODE(variables.stat().st_mode) == 0o600  # it holds client tokens

    runcmd = json.loads(tofu.run("output", "-json", "runcmd").stdout)
    argv = runcmd["vm-0001"][0]
    assert argv[argv.index("--allocator") + 1] == hostile_url  # one argument, never shell syntax
    assert not any("lpc_secret" in arg for arg in argv)  # the token travels in a 0600 file, not on argv
    assert argv[argv.index("--session-account") + 1] == "labpipe-vm"  # users' commands never run as root
    assert argv[argv.index("--session-isolation") + 1] == "systemd"  # a cloud VM runs systemd: a scope per session
    state = json.loads(tofu.run("show", "-json").stdout)
    first_id = made[1]["instance_id"]

    rebooted = tofu.reboot({"id": 1, "hostname": "vm-0001"}, "lpc_secret-new", hostile_url)
    assert rebooted["instance_id"] != first_id  # replaced, as a reboot of a cloud VM re-creates it

    assert tofu.destroy([{"id": 2, "hostname": "vm-0002"}]) == {2: None}
    resources = json.loads(tofu.run("show", "-json").stdout)["values"]["root_module"].get("resources", [])
    assert [r["index"] for r in resources if r["type"] == "terraform_data"] == ["vm-0001"]
    assert state["format_version"]
    assert tofu.destroy([{"id": 1, "hostname": "vm-0001"}]) == {1: None}  # the last one: tofu destroy
    after = json.loads(tofu.run("show", "-json").stdout).get("values") or {}
    assert not after.get("root_module", {}).get("resources")


@needs_tofu
def test_state_holding_client_tokens_is_owner_only(tmp_path):
    tofu = provisioner(tmp_path)
    made = tofu.create([NewVm(1, "vm-0001", "lpc_secret-in-state", [])], "http://127.0.0.1:8765")
    assert isinstance(made[1], dict), made
    state = tofu.root / "terraform.tfstate"
    # the plan holds every variable (client tokens) in clear, and a cloud provider's state holds the user data
    for folder in (tofu.workdir, tofu.root):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    secrets = [p for p in tofu.root.iterdir() if p.is_file() and (".tfstate" in p.name or p.suffix == ".tfplan")]
    assert state in secrets and tofu.root / "labpipe.tfplan" in secrets
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in secrets} == {p.name: 0o600 for p in secrets}
    tofu.reboot({"id": 1, "hostname": "vm-0001"}, "lpc_secret-two", "http://127.0.0.1:8765")  # a second apply
    backups = list(tofu.root.glob("*.tfstate*"))
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in backups} == {p.name: 0o600 for p in backups}


@needs_tofu
def test_a_failing_tofu_fails_each_vm_with_its_message(tmp_path):
    broken_root = tmp_path / "module"
    shutil.copytree(MODULE, broken_root)
    (broken_root / "render" / "broken.tf").write_text('resource "terraform_data" "bad" { input = var.nope }\n')
    settings = OpenTofuSettings(flavor="render", module_root=broken_root, workdir=tmp_path / "w")
    tofu = OpenTofuProvisioner(settings, home=tmp_path)
    made = tofu.create([NewVm(7, "vm-0007", "lpc_x", [])], "http://127.0.0.1:1")
    assert isinstance(made[7], Exception) and "nope" in str(made[7])


def test_unknown_flavor_and_missing_binary_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="no such OpenTofu flavor"):
        OpenTofuProvisioner(OpenTofuSettings(flavor="gcp"), home=tmp_path)
    tofu = OpenTofuProvisioner(OpenTofuSettings(flavor="render", binary="tofu-not-installed"), home=tmp_path)
    with pytest.raises(ToolError, match="not found on PATH"):
        tofu.validate()


def _aws_plugin_cached() -> bool:
    cache = os.environ.get("TF_PLUGIN_CACHE_DIR")
    return bool(cache) and (Path(cache) / "registry.terraform.io" / "hashicorp" / "aws").is_dir()


@needs_tofu
@pytest.mark.skipif(
    not _aws_plugin_cached(),
    reason="the aws flavor needs the hashicorp/aws provider plugin, which cannot be downloaded here "
    "(no registry access); set TF_PLUGIN_CACHE_DIR to a cache holding it to run this",
)
def test_aws_flavor_validates(tmp_path):
    assert provisioner(tmp_path, "aws").validate()["valid"] is True
