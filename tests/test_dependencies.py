"""What a host installs: every import declared, each role's extra holding only what that role needs, all pinned."""

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CORE = [Requirement(r) for r in PYPROJECT["dependencies"]]
EXTRAS = {name: [Requirement(r) for r in reqs] for name, reqs in PYPROJECT["optional-dependencies"].items()}
ROLES = {"radio", "seg", "pose", "mei", "backup", "vms", "bench", "napari", "dev"}


def _names(requirements: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in requirements if r.name != "labpipe"}


def _expanded(extra: str) -> set[str]:
    """An extra's distributions, with the labpipe[...] extras it includes."""
    names = set()
    for requirement in EXTRAS[extra]:
        if requirement.name == "labpipe":
            for included in requirement.extras:
                names |= _expanded(included)
        else:
            names.add(canonicalize_name(requirement.name))
    return names


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files importing it, across the four installed folders."""
    found: dict[str, set[str]] = {}
    for folder in ("lib", "flows", "blocks", "cli", "deployments"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top != "labpipe":
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared():
    declared = _names(CORE).union(*(_expanded(extra) for extra in EXTRAS))
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for module, files in _third_party_imports().items():
        candidates = {canonicalize_name(d) for d in distributions.get(module, [module])}
        if not candidates & declared:
            undeclared[module] = (sorted(candidates), sorted(files)[:3])
    assert not undeclared, f"imported but not in pyproject.toml (module: distributions, files): {undeclared}"


def test_each_role_gets_only_what_it_needs():
    core = _names(CORE)
    assert set(EXTRAS) >= ROLES, f"missing role extras: {ROLES - set(EXTRAS)}"
    assert _expanded("all") >= set().union(*(_expanded(r) for r in ROLES - {"dev"})), "`all` must hold every role"
    assert _expanded("training") == _expanded("mei")
    assert not core & {"moto", "websockets", "imageio-ffmpeg", "torch", "casatools", "casatasks"}
    assert not core & {canonicalize_name(r.name) for r in EXTRAS["radio"]}
    for casa in ("casatools", "casatasks"):
        assert [extra for extra in EXTRAS if casa in _names(EXTRAS[extra])] == ["bench"]
    assert "torch" not in _expanded("backup") | _expanded("vms") | _expanded("radio")
    # not imported anywhere: prefect-dask (no DaskTaskRunner), torchvision (nnU-Net does not import it)
    everything = core | set().union(*(_expanded(extra) for extra in EXTRAS))
    assert not everything & {"prefect-dask", "torchvision"}


def test_private_api_users_are_capped_below_the_next_release():
    for extra, name in (("radio", "pyuvdata"), ("seg", "nnunetv2")):
        (requirement,) = [r for r in EXTRAS[extra] if r.name == name]
        assert any(spec.operator == "<" for spec in requirement.specifier), f"{name} needs an upper bound"
        assert importlib.metadata.version(name) in requirement.specifier


def test_every_declared_dependency_is_pinned_in_constraints():
    pinned = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)$", line.strip())
        if match:
            pinned[canonicalize_name(match[1])] = match[2]
    declared = _names(CORE).union(*(_names(reqs) for reqs in EXTRAS.values()))
    assert not declared - set(pinned), f"declared but not pinned in constraints.txt: {sorted(declared - set(pinned))}"
    for name in declared:
        installed = importlib.metadata.version(name)
        assert pinned[name] == installed, f"{name}: constraints.txt pins {pinned[name]}, .venv has {installed}"


def test_the_install_script_knows_every_role_of_all():
    script = (ROOT / "scripts" / "install-system-packages.sh").read_text()
    every_role = set(re.search(r'^every_role="([^"]+)"', script, re.M)[1].split())
    (included,) = [r for r in EXTRAS["all"] if r.name == "labpipe"]
    assert every_role == set(included.extras)
    known = {"core"} | set(EXTRAS)
    for line in (ROOT / "infra" / "apt-packages.txt").read_text().splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) > 1:
            assert set(fields[1].split(",")) <= known, f"unknown role in infra/apt-packages.txt: {line}"
