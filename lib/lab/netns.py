"""Network namespaces joined by veth links: the simulated lab's hosts and the switch between them.

Each host (``main``, ``gpu``, ``backup``) is a namespace ``<prefix>-<host>`` with one interface ``lab0`` on
``<subnet>.<n>/24``; a fourth namespace ``<prefix>-switch`` holds the bridge their veth peers join. Nothing
is created in the namespace of the machine itself, so the hosts reach each other and their own loopback
and nothing else (no route, no address and no interface of theirs exists outside).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from labpipe.errors import ConfigError, ToolError
from labpipe.procs import wait_until

HOSTS = ("main", "gpu", "backup")
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_PREFIX = re.compile(r"[a-z][a-z0-9]{0,7}")
_SUBNET = re.compile(r"10\.(\d{1,3})\.(\d{1,3})")
T = TypeVar("T")


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise ToolError(f"ip {' '.join(args)}", result.stderr.strip() or f"exit {result.returncode}")


@dataclass(frozen=True)
class LabNetwork:
    """The namespaces and addresses of one simulated lab (``prefix`` keeps two labs apart)."""

    prefix: str = "labpipe"
    subnet: str = "10.231.0"
    hosts: tuple[str, ...] = HOSTS

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise ConfigError(self.prefix, "a lab prefix is 1-8 lower-case letters and digits", "e.g. labpipe")
        match = _SUBNET.fullmatch(self.subnet)
        if not match or not all(0 <= int(part) <= 255 for part in match.groups()):
            raise ConfigError(self.subnet, "the lab subnet is the first three numbers of a 10.x.y.0/24", "10.231.0")

    def namespace(self, host: str) -> str:
        if host not in self.hosts and host != "switch":
            raise ConfigError(host, "is not a host of the simulated lab", f"one of {', '.join(self.hosts)}")
        return f"{self.prefix}-{host}"

    @property
    def namespaces(self) -> list[str]:
        return [self.namespace(h) for h in self.hosts] + [self.namespace("switch")]

    def address(self, host: str) -> str:
        return f"{self.subnet}.{self.hosts.index(host) + 1}"

    @property
    def cidr(self) -> str:
        return f"{self.subnet}.0/24"

    def existing(self) -> list[str]:
        """This lab's namespaces that exist now."""
        return [ns for ns in self.namespaces if (NETNS_DIR / ns).exists()]

    def create(self) -> None:
        """The namespaces, the bridge and one veth link per host; on any failure, nothing is left."""
        if self.existing():
            raise ConfigError(
                ", ".join(self.existing()), "namespaces of this lab exist already", "`labpipe lab simulate down` first"
            )
        switch = self.namespace("switch")
        try:
            for ns in self.namespaces:
                _ip("netns", "add", ns)
                _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", switch, "link", "set", "br0", "up")
            for host in self.hosts:
                ns = self.namespace(host)
                _ip("-n", switch, "link", "add", host, "type", "veth", "peer", "name", "lab0", "netns", ns)
                _ip("-n", switch, "link", "set", host, "master", "br0", "up")
                _ip("-n", ns, "addr", "add", f"{self.address(host)}/24", "dev", "lab0")
                _ip("-n", ns, "link", "set", "lab0", "up")
        except BaseException:
            self.destroy()
            raise

    def set_link(self, host: str, *, up: bool) -> None:
        """Take ``host``'s link to the switch down (unplugged) or up again."""
        _ip("-n", self.namespace(host), "link", "set", "lab0", "up" if up else "down")

    def pids(self) -> dict[str, list[int]]:
        """Processes in each existing namespace of this lab (whatever started them)."""
        found = {}
        for ns in self.existing():
            result = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
            found[ns] = [int(p) for p in result.stdout.split() if p.isdigit()]
        return found

    def kill_all(self, grace: float = 10.0) -> list[int]:
        """SIGTERM every process in the lab's namespaces, SIGKILL what is left after ``grace`` seconds."""
        killed: list[int] = []
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            pids = [p for ps in self.pids().values() for p in ps]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            killed += [p for p in pids if p not in killed]
            wait_until(lambda: not any(self.pids().values()), wait)
        return killed

    def destroy(self) -> list[str]:
        """Every process in the namespaces ended, then the namespaces (and with them the links) deleted."""
        self.kill_all()
        removed = []
        for ns in self.existing():
            _ip("netns", "del", ns)
            removed.append(ns)
        return removed

    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace (``ip netns exec`` execs it: the pid is the program's)."""
        return ["ip", "netns", "exec", self.namespace(host), *argv]

    def call(self, host: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """``fn(*args, **kwargs)`` in a thread that has entered ``host``'s network namespace.

        Sockets that ``fn`` opens belong to that host (a probe of its services); the thread ends with the
        call, so this process's own threads never change namespace.
        """
        outcome: dict[str, object] = {}

        def run() -> None:
            try:
                fd = os.open(NETNS_DIR / self.namespace(host), os.O_RDONLY)
                try:
                    if _libc().setns(fd, CLONE_NEWNET) != 0:
                        errno = ctypes.get_errno()
                        raise ToolError(self.namespace(host), f"setns failed: {os.strerror(errno)}", "run as root")
                finally:
                    os.close(fd)
                outcome["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                outcome["error"] = exc

        thread = threading.Thread(target=run, name=f"netns-{host}", daemon=True)
        thread.start()
        thread.join()
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["value"]  # type: ignore[return-value]


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def namespaces_permitted() -> str | None:
    """None when this process may make network namespaces, else why not (for a test's skip reason)."""
    probe = f"lpprobe{os.getpid() % 100000}"
    try:
        result = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        return "the `ip` command (iproute2) is not installed"
    if result.returncode != 0:
        return f"`ip netns add` is not permitted here: {result.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=30)
    return None
