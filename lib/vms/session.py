"""A user's session on a VM: their command as an unprivileged account, held whole and killed whole at release.

The client (root on a VM) never runs a user's command as itself. A session runs
as ``session_account`` (a dedicated system account, never uid or gid 0) with no
new privileges, a clean environment and a 0700 folder of its own, inside a
container of processes that nothing in it can leave:

- ``SystemdScope``: a transient ``systemd-run --scope`` unit, where systemd is
  PID 1 (a real VM); stopping the unit kills every process in it.
- ``CgroupFolder``: a cgroup v2 folder made by the client under its own cgroup
  (or ``cgroup_parent``), where systemd is not running; at release the client
  writes ``1`` to ``cgroup.kill`` (Linux >= 5.14; freeze and SIGKILL each
  member on older kernels).

``auto`` picks the first that works here. ``setsid``, double forks and daemons
stay in the container, so nothing the user started survives into the next
user's session. Entering it is ``labpipe.vms.session_exec``: it joins the
cgroup, drops to the account and execs the user's argument list (no shell).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from labpipe.errors import ConfigError, ToolError
from labpipe.procs import wait_until

log = logging.getLogger("labpipe.vms.session")
ACCOUNT_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
LABEL = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ISOLATIONS = ("auto", "systemd", "cgroup")


@dataclass(frozen=True)
class SessionAccount:
    """The unprivileged account a session runs as."""

    name: str
    uid: int
    gid: int

    @classmethod
    def resolve(cls, name: str) -> SessionAccount:
        if not ACCOUNT_NAME.match(name or ""):
            raise ConfigError(repr(name), "not a usable account name", "lower-case letters, digits, '-' and '_'")
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ConfigError(
                name, "no such account on this host", f"create it with `labpipe vms session-account --name {name}`"
            ) from None
        if entry.pw_uid == 0 or entry.pw_gid == 0:
            raise ConfigError(name, "is root or in root's group; sessions never run as root", "use a system account")
        return cls(name, entry.pw_uid, entry.pw_gid)


def ensure_session_account(name: str) -> tuple[SessionAccount, bool]:
    """The account ``name``, made as a system account (no home, no login shell) if missing; (account, made)."""
    with contextlib.suppress(ConfigError):
        return SessionAccount.resolve(name), False
    if not ACCOUNT_NAME.match(name or ""):
        SessionAccount.resolve(name)  # raises the naming error
    useradd = shutil.which("useradd")
    if os.geteuid() != 0 or not useradd:
        raise ConfigError(name, "no such account, and only root with useradd can make it", f"useradd --system {name}")
    argv = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", "--comment", "labpipe VM sessions", name]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolError("useradd", f"exit {done.returncode}: {done.stderr.strip()}")
    return SessionAccount.resolve(name), True


def unreachable_ancestor(folder: Path, account: SessionAccount) -> Path | None:
    """The first folder above ``folder`` the account cannot pass through (no search permission), or None."""
    groups = {account.gid}
    for parent in reversed(Path(folder).absolute().parents):
        info = parent.stat()
        if info.st_uid == account.uid:
            allowed = info.st_mode & 0o100
        elif info.st_gid in groups:
            allowed = info.st_mode & 0o010
        else:
            allowed = info.st_mode & 0o001
        if not allowed:
            return parent
    return None


def session_label(workdir: Path, name: str | None = None) -> str:
    """A name for this VM's session container, unique on the host (several local VMs share one)."""
    digest = hashlib.sha256(str(Path(workdir).absolute()).encode()).hexdigest()[:10]
    label = f"{name}-{digest}" if name else digest
    if not LABEL.match(label):
        raise ConfigError(repr(label), "not a usable session label", "letters, digits, '.', '-' and '_'")
    return label


def account_groups(account: SessionAccount) -> list[int]:
    """The account's groups as /etc/group lists them (an admin may add e.g. ``render`` for GPUs); never 0."""
    try:
        groups = os.getgrouplist(account.name, account.gid)
    except OSError:
        groups = [account.gid]
    return sorted({g for g in groups if g != 0})


def enter_argv(account: SessionAccount, argv: list[str], cgroup: Path | None = None) -> list[str]:
    """What starts ``argv`` as ``account`` (through ``labpipe.vms.session_exec``, isolated from cwd and env)."""
    groups = ",".join(str(g) for g in account_groups(account)) if account.uid else ""
    entry = [sys.executable, "-I", "-m", "labpipe.vms.session_exec", "--uid", str(account.uid),
             "--gid", str(account.gid), "--groups", groups]  # fmt: skip
    if cgroup is not None:
        entry += ["--cgroup", str(cgroup)]
    return [*entry, "--", *argv]


class Containment(ABC):
    """Holds every process of one session; ``kill`` leaves none behind."""

    kind: str

    @abstractmethod
    def command(self, account: SessionAccount, argv: list[str]) -> list[str]:
        """The argument list that starts ``argv`` as ``account`` inside the container (made fresh)."""

    @abstractmethod
    def occupied(self) -> bool:
        """Whether any process is in the container."""

    @abstractmethod
    def kill(self, grace: float = 5.0) -> None:
        """SIGTERM everything, SIGKILL what is left after ``grace`` seconds, wait until empty, remove it."""


class CgroupFolder(Containment):
    """A cgroup v2 folder owned by the client: members cannot leave it, ``cgroup.kill`` ends them all."""

    kind = "cgroup"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def occupied(self) -> bool:
        if not self.path.is_dir():
            return False
        return "populated 1" in self._read("cgroup.events")

    def pids(self) -> list[int]:
        if not self.path.is_dir():
            return []
        return [int(line) for line in self._read("cgroup.procs").split()]

    def command(self, account: SessionAccount, argv: list[str]) -> list[str]:
        if self.path.exists():
            self.kill(0)  # a session a crashed client left behind
        self.path.mkdir()
        return enter_argv(account, argv, self.path)

    def _signal_all(self, signum: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _kill_all(self) -> None:
        if (self.path / "cgroup.kill").exists():
            (self.path / "cgroup.kill").write_text("1")
            return
        # kernels before 5.14: freeze so nothing forks meanwhile, SIGKILL each member (fatal signals reach frozen tasks)
        (self.path / "cgroup.freeze").write_text("1")
        try:
            self._signal_all(signal.SIGKILL)
        finally:
            (self.path / "cgroup.freeze").write_text("0")

    def kill(self, grace: float = 5.0) -> None:
        if not self.path.is_dir():
            return
        if grace > 0 and self.occupied():
            self._signal_all(signal.SIGTERM)
            wait_until(lambda: not self.occupied(), grace, interval=0.05)
        deadline = time.monotonic() + 30
        while self.occupied():
            self._kill_all()
            if wait_until(lambda: not self.occupied(), 2.0, interval=0.05):
                break
            if time.monotonic() > deadline:
                raise ToolError(str(self.path), f"processes {self.pids()} survived cgroup.kill for 30 s")
        with contextlib.suppress(FileNotFoundError):
            self.path.rmdir()


class SystemdScope(Containment):
    """A transient systemd scope: ``systemctl stop`` kills its whole control group."""

    kind = "systemd"

    def __init__(self, label: str) -> None:
        self.unit = f"labpipe-vm-{label}.scope"

    def _systemctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)

    def occupied(self) -> bool:
        return self._systemctl("is-active", "--quiet", self.unit).returncode == 0

    def command(self, account: SessionAccount, argv: list[str]) -> list[str]:
        if self.occupied():
            self.kill(0)
        self._systemctl("reset-failed", self.unit)
        return ["systemd-run", "--scope", "--quiet", "--collect", f"--unit={self.unit}",
                "--property=KillMode=control-group", "--property=TimeoutStopSec=5", "--",
                *enter_argv(account, argv)]  # fmt: skip

    def kill(self, grace: float = 5.0) -> None:
        if grace <= 0:
            self._systemctl("kill", "--signal=SIGKILL", self.unit)
        self._systemctl("stop", self.unit)  # SIGTERM, then SIGKILL after TimeoutStopSec, for the whole cgroup
        if not wait_until(lambda: not self.occupied(), 15, interval=0.05):
            raise ToolError(self.unit, "still active after systemctl stop")


def systemd_running() -> bool:
    """Whether systemd is PID 1 here (sd_booted's test) and systemd-run is installed."""
    return Path("/run/systemd/system").is_dir() and shutil.which("systemd-run") is not None


def cgroup2_mount() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields, _, rest = line.partition(" - ")
            if rest.split()[:1] == ["cgroup2"]:
                return Path(fields.split()[4])
    return None


def own_cgroup() -> Path | None:
    """This process's cgroup v2 folder, or None without a cgroup v2 hierarchy."""
    mount = cgroup2_mount()
    if mount is None:
        return None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return mount / line[3:].lstrip("/")
    return mount


def make_containment(isolation: str, label: str, cgroup_parent: Path | None = None) -> Containment:
    """The container for this VM's sessions: ``systemd``, ``cgroup`` or ``auto`` (systemd where it runs)."""
    if isolation not in ISOLATIONS:
        raise ConfigError(isolation, "unknown session isolation", f"use one of {', '.join(ISOLATIONS)}")
    if not LABEL.match(label):
        raise ConfigError(repr(label), "not a usable session label")
    if isolation == "systemd" or (isolation == "auto" and systemd_running()):
        if not systemd_running():
            raise ConfigError("systemd", "systemd is not PID 1 here", "use session isolation 'cgroup' or 'auto'")
        return SystemdScope(label)
    parent = Path(cgroup_parent) if cgroup_parent else own_cgroup()
    if parent is None or not (parent / "cgroup.procs").exists():
        raise ConfigError(
            parent or "cgroup v2", "no cgroup v2 folder to hold sessions in", "mount cgroup2 or run under systemd"
        )
    if not os.access(parent, os.W_OK):
        raise ConfigError(parent, "this client cannot make cgroups here", "run the client as root or delegate it")
    return CgroupFolder(parent / f"labpipe-vm-{label}")
