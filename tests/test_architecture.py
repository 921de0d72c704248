"""The house rules that hold the layers apart, checked on the code itself."""

import ast
import importlib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PREFECT_FILE = ROOT / "deployments" / "prefect.yaml"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "lib").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_lib_never_imports_prefect_or_flows(path):
    bad = {
        n
        for n in _imports(path)
        if n.split(".")[0] == "prefect" or n.startswith(("labpipe.flows", "labpipe.deployments", "labpipe.blocks"))
    }
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: lib/ is the domain and must not"


def test_every_package_folder_is_installed_under_labpipe():
    import setuptools  # noqa: F401 - setup.py's find_packages

    namespace: dict = {}
    code = (ROOT / "setup.py").read_text().replace("setup(packages=packages, package_dir=FOLDERS)", "")
    exec(compile(code, "setup.py", "exec"), namespace)  # noqa: S102 - our own setup.py
    expected, without_init = set(), []
    for root, folder in namespace["FOLDERS"].items():
        # every folder holding Python files is a package: one without __init__.py would be left out of
        # find_packages (and of the wheel) while still importing from a checkout as a namespace package
        for code_folder in sorted({py.parent for py in (ROOT / folder).rglob("*.py") if "__pycache__" not in py.parts}):
            rel = code_folder.relative_to(ROOT / folder)
            expected.add(".".join([root, *rel.parts]) if rel.parts else root)
            if not (code_folder / "__init__.py").exists():
                without_init.append(str(code_folder.relative_to(ROOT)))
    assert not without_init, f"folders of Python files without __init__.py: {without_init}"
    assert expected == set(namespace["packages"])
    for name in sorted(expected):
        importlib.import_module(name)


def _deployments() -> list[dict]:
    return yaml.safe_load(PREFECT_FILE.read_text())["deployments"]


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: f"{d['entrypoint'].split(':')[1]}/{d['name']}")
def test_deployments_point_at_flows_on_the_three_pools(deployment):
    from prefect.flows import load_flow_from_entrypoint

    assert deployment["work_pool"]["name"] in {"cpu", "gpu", "backup"}
    path, _ = deployment["entrypoint"].split(":")
    assert (ROOT / path).exists() and path.startswith("flows/")
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    unknown = set(deployment.get("parameters", {})) - set(flow.parameters.properties)
    assert not unknown, f"parameters {unknown} are not parameters of {flow.name}"


def test_deployment_names_are_unique_per_flow():
    seen = set()
    for d in _deployments():
        key = (d["entrypoint"], d["name"])
        assert key not in seen, key
        seen.add(key)


def _imported_names(path: Path, prefix: str) -> list[tuple[str, str]]:
    """(module, name) of every ``from <prefix>... import name`` in ``path``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "*") for alias in node.names if alias.name.startswith(prefix)]
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "flows").glob("*.py")), ids=lambda p: p.name)
def test_no_flow_imports_another_flow(path):
    others = {m for m, _ in _imported_names(path, "labpipe.flows")} - {"labpipe.flows.common"}
    assert not others, f"flows/{path.name} imports {sorted(others)}: what two flows share belongs in lib or blocks"


def test_flows_common_holds_prefect_helpers_only():
    common = importlib.import_module("labpipe.flows.common")
    names = ("load_block", "layout", "lab_database", "database_settings", "dask_settings")
    loaders = [n for n in names if getattr(getattr(common, n, None), "__module__", "") == "labpipe.flows.common"]
    assert not loaders, f"configuration loaders {loaders} belong in labpipe.blocks"


# Prefect adapters the CLI uses to start or signal flow runs (not configuration, not lifecycle rules)
LAUNCH_HELPERS = {"PrefectLauncher", "PrefectJobRunner", "emit_vm_event", "gpu_slot"}


@pytest.mark.parametrize("path", sorted((ROOT / "cli").glob("*.py")), ids=lambda p: p.name)
def test_the_cli_imports_flows_only_to_launch_them(path):
    from prefect import Flow

    wrong = []
    for module, name in _imported_names(path, "labpipe.flows"):
        value = getattr(importlib.import_module(module), name, None) if name != "*" else None
        if not isinstance(value, Flow) and name not in LAUNCH_HELPERS:
            wrong.append(f"{module}.{name}")
    assert not wrong, f"cli/{path.name} takes {wrong} from flows: configuration is in labpipe.blocks, rules in lib"


@pytest.mark.parametrize("deployment", _deployments(), ids=lambda d: f"{d['entrypoint'].split(':')[1]}/{d['name']}")
def test_every_deployed_flow_documents_its_parameters(deployment):
    """The run form in the Prefect UI shows each parameter's description (the flow docstring's Args:)."""
    module, name = deployment["entrypoint"].split(":")
    flow = getattr(importlib.import_module("labpipe.flows." + Path(module).stem), name)
    properties = flow.parameters.model_dump()["properties"]
    undocumented = [p for p, schema in properties.items() if not schema.get("description")]
    assert not undocumented, f"{name}: parameters without a description in its docstring's Args: {undocumented}"


# Test files of lib/ that still test several modules under another name (to be split as their lifecycles are
# next worked on); every other tests/lib/<package>/test_<x>.py is named after the module x it tests.
NOT_YET_MIRRORED = {
    "backup/test_archive_names.py", "calcium/test_population.py",
    "lab/test_certs_and_secrets.py", "lab/test_units.py", "pose/test_inputs.py",
    "registry/test_cli.py", "registry/test_registry_safety.py", "seg/test_run_names.py",
    "seg/test_simulate_and_artifacts.py", "vms/test_access.py",
}  # fmt: skip


def _lib_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT / "tests" / "lib")) for p in (ROOT / "tests" / "lib").glob("*/test_*.py"))


@pytest.mark.parametrize("test_file", _lib_test_files())
def test_lib_tests_are_named_after_the_module_they_test(test_file):
    package, name = test_file.split("/")
    module = name.removeprefix("test_").removesuffix(".py")
    named = (ROOT / "lib" / package / f"{module}.py").is_file() or (ROOT / "lib" / package / module).is_dir()
    if test_file in NOT_YET_MIRRORED:
        assert not named, f"{test_file} is named after a module now: take it off NOT_YET_MIRRORED"
        return
    assert named, f"tests/lib/{test_file} names no module of lib/{package}/ (tests mirror modules)"
