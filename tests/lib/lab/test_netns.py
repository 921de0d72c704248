"""The simulated lab's network: real namespaces and veth links, reachable only among themselves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from labpipe.errors import ToolError
from labpipe.lab.netns import LabNetwork, namespaces_permitted
from labpipe.procs import wait_until

pytestmark = pytest.mark.skipif(namespaces_permitted() is not None, reason=str(namespaces_permitted()))

LISTENER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7070)); s.listen(); print("listening", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"gpu"); c.close()
"""


def _greeting(address: str) -> bytes:
    with socket.create_connection((address, 7070), timeout=5) as conn:
        return conn.recv(16)


def _routes(net: LabNetwork, host: str) -> str:
    return subprocess.run(["ip", "-n", net.namespace(host), "route"], capture_output=True, text=True).stdout


@pytest.fixture
def network():
    net = LabNetwork(prefix=f"lpt{os.getpid() % 10000}", subnet="10.232.7")
    net.create()
    yield net
    net.destroy()


def test_hosts_reach_each_other_and_nothing_else_and_destroy_leaves_nothing(network):
    listener = subprocess.Popen(
        network.exec_argv("gpu", [sys.executable, "-c", LISTENER, network.address("gpu")]),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert listener.stdout.readline().strip() == "listening"
    assert network.call("main", _greeting, network.address("gpu")) == b"gpu"  # main -> gpu over the link
    assert network.call("backup", _greeting, network.address("gpu")) == b"gpu"
    with pytest.raises(OSError):  # the machine itself has no route into the lab
        _greeting(network.address("gpu"))
    for host in network.hosts:  # and the lab none out of it: only its own subnet, no default route
        assert _routes(network, host).split()[0] == network.cidr
        assert "default" not in _routes(network, host)
    assert listener.pid in network.pids()[network.namespace("gpu")]

    assert sorted(network.destroy()) == sorted(network.namespaces)
    assert network.existing() == []
    assert wait_until(lambda: listener.poll() is not None, 5)
    assert not any(ns.startswith(network.prefix + "-") for ns in os.listdir("/run/netns"))


def test_a_failure_half_way_leaves_no_namespace():
    net = LabNetwork(prefix=f"lpf{os.getpid() % 10000}", subnet="10.232.8", hosts=("main", "name-too-long-for-a-link"))
    with pytest.raises(ToolError):
        net.create()
    assert net.existing() == []
