"""The install scripts as `make install` runs them: system packages per role, and the Python check."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APT_SCRIPT = ROOT / "scripts" / "install-system-packages.sh"
PYTHON_CHECK = ROOT / "scripts" / "check-python.sh"
# names no distribution has, so they are always "missing"; the real list's format and roles
LIST = """\
# a comment line
labpipe-test-backup-dev   backup,dev   # pulls and tests
labpipe-test-core         # an old-style line without roles: every host
labpipe-test-bench        bench        # the benchmark peer
labpipe-test-radio        radio        # radio only
bash                      core         # installed on every Debian host: never listed there
"""


def _listing(tmp_path: Path, roles: str) -> subprocess.CompletedProcess:
    (tmp_path / "apt.txt").write_text(LIST)
    env = {**os.environ, "LABPIPE_APT_LIST": str(tmp_path / "apt.txt"), "LABPIPE_SKIP_APT": "1", "LABPIPE_ROLES": roles}
    return subprocess.run([str(APT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        ("backup", {"labpipe-test-backup-dev", "labpipe-test-core"}),
        ("radio,dev", {"labpipe-test-backup-dev", "labpipe-test-core", "labpipe-test-radio"}),
        ("all", {"labpipe-test-backup-dev", "labpipe-test-core", "labpipe-test-bench", "labpipe-test-radio"}),
        ("vms", {"labpipe-test-core"}),
    ],
)
def test_a_host_gets_the_packages_of_its_roles_and_skip_apt_lists_them(tmp_path, roles, expected):
    result = _listing(tmp_path, roles)
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stderr.splitlines() if line.startswith("  ")}
    assert listed == expected | (set() if shutil.which("dpkg-query") else {"bash"})
    assert result.stderr.startswith("LABPIPE_SKIP_APT=1: not installing these missing Debian packages")
    assert "labpipe-test-core an old-style line without roles: every host\n" in result.stderr  # with its reason


def test_what_apt_offers_is_installed_and_what_it_does_not_is_skipped_with_its_reason(tmp_path):
    """With the package lists already on the host (a dry run: nothing is installed, nothing fetched)."""
    policy = (
        subprocess.run(["apt-cache", "policy", "hello"], capture_output=True, text=True)
        if shutil.which("apt-cache")
        else None
    )
    if policy is None or "Candidate: (none)" in policy.stdout or not policy.stdout.strip():
        pytest.skip("no apt package lists here (apt-get update has not run)")
    if subprocess.run(["dpkg-query", "-W", "hello"], capture_output=True).returncode == 0:
        pytest.skip("GNU hello is installed here")
    (tmp_path / "apt.txt").write_text("hello  core  # offered by Debian and Ubuntu\nlabpipe-test-core  core  # not\n")
    env = {**os.environ, "LABPIPE_APT_LIST": str(tmp_path / "apt.txt"), "LABPIPE_APT_DRY_RUN": "1"}
    result = subprocess.run([str(APT_SCRIPT)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "would install: hello"
    assert "does not offer them" in result.stderr and "labpipe-test-core not" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"), reason="needs root to run as another user")
def test_a_user_without_sudo_is_told_the_two_ways_on():
    if shutil.which("sudo", path="/usr/bin:/bin"):
        pytest.skip("sudo is installed here: the user would be asked for a password instead")
    with tempfile.TemporaryDirectory(prefix="labpipe-apt-") as folder:  # under /tmp: readable by the other user
        listing = Path(folder) / "apt.txt"
        listing.write_text(LIST)
        Path(folder).chmod(0o755)
        listing.chmod(0o644)
        result = subprocess.run(
            ["runuser", "-u", "nobody", "--", "env", "PATH=/usr/bin:/bin", f"LABPIPE_APT_LIST={listing}"]
            + ["LABPIPE_ROLES=backup", str(APT_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert "needs root" in result.stderr and "labpipe-test-backup-dev" in result.stderr
    assert "hint:" in result.stderr and "LABPIPE_SKIP_APT=1 make install" in result.stderr


def test_after_make_install_only_what_apt_does_not_offer_is_missing():
    """`make install` ran here: every package of every role is installed, or apt has none to give (Ubuntu's
    chromium). A package that apt offers but the list's parsing dropped would show up here."""
    if not shutil.which("dpkg-query") or not shutil.which("apt-cache"):
        pytest.skip("not a Debian-like host")
    env = {**os.environ, "LABPIPE_SKIP_APT": "1", "LABPIPE_ROLES": "all,dev"}
    result = subprocess.run([str(APT_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    missing = [line.split()[0] for line in result.stderr.splitlines() if line.startswith("  ")]
    for package in missing:
        policy = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True).stdout
        assert "Candidate: (none)" in policy or not policy.strip(), f"{package} is offered by apt but not installed"


def _fake_python(tmp_path: Path, version: str) -> Path:
    fake = tmp_path / f"python{version}"
    fake.write_text(f'#!/bin/sh\n[ "$1" = --version ] && echo "Python {version}" && exit 0\nexit 1\n')
    fake.chmod(0o755)
    return fake


def test_python_older_than_3_11_is_refused_up_front(tmp_path):
    old = _fake_python(tmp_path, "3.10.12")
    refused = subprocess.run([str(PYTHON_CHECK), "--missing-ok", str(old)], capture_output=True, text=True)
    assert refused.returncode == 1
    assert "needs Python >= 3.11, this is Python 3.10.12" in refused.stderr and "hint:" in refused.stderr
    # the virtualenv's interpreter is checked first when it exists
    chosen = subprocess.run([str(PYTHON_CHECK), sys.executable, str(old)], capture_output=True, text=True)
    assert chosen.returncode == 0, chosen.stderr
    nothing = tmp_path / "no-python"
    assert subprocess.run([str(PYTHON_CHECK), "--missing-ok", str(nothing)]).returncode == 0
    missing = subprocess.run([str(PYTHON_CHECK), str(nothing)], capture_output=True, text=True)
    assert missing.returncode == 1 and "no Python interpreter found" in missing.stderr


def test_the_default_install_uses_no_other_index_and_a_role_installs_only_its_extra():
    def dry_run(*args: str) -> str:
        return subprocess.run(
            ["make", "-n", "-B", "install", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout

    default = dry_run()
    assert '-e ".[all,dev]"' in default and "--extra-index-url" not in default
    backup = dry_run("EXTRAS=backup", "TORCH_INDEX=https://download.pytorch.org/whl/cu126")
    assert '-e ".[backup]"' in backup and 'LABPIPE_ROLES="backup"' in backup
    assert "--extra-index-url https://download.pytorch.org/whl/cu126" in backup
