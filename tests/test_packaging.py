"""The wheel as a lab host gets it: built from the checkout, installed into a fresh virtualenv, every module imported.

The fresh virtualenv sees the dependencies of this checkout's .venv through a ``.pth`` *path line*: Python adds
that folder to ``sys.path`` without processing the ``.pth`` files inside it, so the editable install of this
checkout (``__editable__.labpipe-*.pth`` and its finder) stays out and ``import labpipe`` can only come from
the wheel. No network: the wheel is built with the setuptools already installed (``--no-build-isolation``).
"""

import ast
import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


def _folders() -> dict[str, str]:
    """setup.py's FOLDERS: package name -> source folder (read, not executed)."""
    for node in ast.walk(ast.parse((ROOT / "setup.py").read_text())):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["FOLDERS"]:
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no FOLDERS mapping")


def _source_files() -> dict[str, Path]:
    """Every file the wheel must carry, by its path inside the wheel (labpipe/..., labpipe/flows/...)."""
    files = {}
    for package, folder in _folders().items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                rel = path.relative_to(ROOT / folder)
                files["/".join([*package.split("."), *rel.parts])] = path
    return files


def _module_name(wheel_path: str) -> str:
    parts = wheel_path.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"  # a copy, so the build leaves no build/ or *.egg-info in the checkout
    source.mkdir()
    for folder in _folders().values():
        shutil.copytree(ROOT / folder, source / folder, ignore=IGNORED)
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("labpipe-*.whl")
    return wheel


def _fresh_venv(tmp_path: Path, wheel: Path) -> Path:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "--python", str(python)]
    subprocess.run([*pip, "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True)
    fresh_site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dependencies = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    (Path(fresh_site) / "labpipe-test-dependencies.pth").write_text("".join(f"{p}\n" for p in dependencies))
    return python


IMPORT_ALL = """
import importlib, json, sys, traceback
import labpipe
modules = json.loads(sys.argv[1])
failed = {}
for name in modules:
    try:
        importlib.import_module(name)
    except BaseException:
        failed[name] = traceback.format_exc(limit=3)[-1500:]
files = {name: getattr(sys.modules.get(name), "__file__", None) for name in modules}
print(json.dumps({"labpipe": labpipe.__file__, "failed": failed, "files": files}))
"""


def test_the_wheel_carries_every_module_and_each_imports_in_a_fresh_venv(tmp_path):
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        carried = set(archive.namelist())
    expected = _source_files()
    missing = sorted(f"{path} ({source.relative_to(ROOT)})" for path, source in expected.items() if path not in carried)
    assert not missing, f"files missing from the wheel: {missing}"
    code_folders = {p.rsplit("/", 1)[0] for p in carried if p.endswith(".py") and p.startswith("labpipe/")}
    namespace_folders = sorted(f for f in code_folders if f"{f}/__init__.py" not in carried)
    assert not namespace_folders, f"folders in the wheel without __init__.py: {namespace_folders}"

    python = _fresh_venv(tmp_path, wheel)
    # __main__ modules run their program when imported: the console script below runs that one
    modules = sorted({_module_name(p) for p in expected if p.endswith(".py") and not p.endswith("/__main__.py")})
    home = tmp_path / "home"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LABPIPE_HOME": str(home / "labpipe"),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MPLBACKEND": "Agg",
        "MPLCONFIGDIR": str(home / "mpl"),
    }
    result = subprocess.run(
        [str(python), "-I", "-c", IMPORT_ALL, json.dumps(modules)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    fresh = str(tmp_path / "venv")
    assert report["labpipe"].startswith(fresh), f"labpipe imported from {report['labpipe']}, not the fresh venv"
    assert not report["failed"], "\n".join(f"{name}:\n{tb}" for name, tb in report["failed"].items())
    elsewhere = {name: f for name, f in report["files"].items() if not str(f).startswith(fresh)}
    assert not elsewhere, f"modules not imported from the installed wheel: {elsewhere}"

    command = subprocess.run(
        [str(python.parent / "labpipe"), "--help"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert command.returncode == 0 and "Usage: labpipe" in command.stdout, command.stdout + command.stderr
