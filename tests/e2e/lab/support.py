"""What the simulated lab's e2e modules share: why they may not run here, the lab's names, commands on its hosts,
and the notification receivers inside the lab's main namespace (where the Prefect server sends from)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from labpipe.lab.netns import namespaces_permitted

PREFIX = f"lpe{os.getpid() % 10000}"  # one lab per session (two sessions on one machine stay apart)
SUBNET = "10.233.0"
LABPIPE = str(Path(sys.executable).parent / "labpipe")
INLAB = str(Path(__file__).with_name("inlab.py"))


def why_not() -> str | None:
    """None when this machine can run the simulated lab, else the reason (the tests' skip reason)."""
    reason = namespaces_permitted()
    if reason:
        return reason
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        return "Debian's PostgreSQL server programs are not installed (apt-get install postgresql)"
    for tool, package in (("sshd", "openssh-server"), ("rrsync", "rsync"), ("setpriv", "util-linux")):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin"):
            return f"{tool} is not installed (apt-get install {package})"
    return None


WHY_NOT = why_not()


def session_tiny_model(home: Path):
    """The session's tiny nnU-Net model (``tests/lib/seg/seg_model.py``: trained once per session, cached per
    process), so the lab's segmentations cost no training when tests/lib/seg runs in the same session. Loaded by
    its path under its module name: this folder is a package, and ``tests.lib`` is not importable from it until
    pytest has collected tests/lib."""
    name = "tests.lib.seg.seg_model"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[2] / "lib" / "seg" / "seg_model.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module.trained_tiny_model(home)


def simulate(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``labpipe lab simulate ARGS`` for this session's lab."""
    return subprocess.run(
        [LABPIPE, "lab", "simulate", *args, "--prefix", PREFIX, "--subnet", SUBNET],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def in_lab(lab, host: str, command: str, argument: dict | None = None, timeout: float = 900) -> dict:
    """One command of ``inlab.py`` on ``host`` (its namespace, env files, secrets); its JSON answer."""
    result = lab.run(host, [sys.executable, INLAB, command, json.dumps(argument or {})], timeout=timeout)
    assert result.returncode == 0, f"{command} on {host}: {result.stdout[-2000:]}{result.stderr[-4000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


class Inboxes:
    """A webhook receiver and an SMTP server on the main host's loopback: the Prefect server (on main) sends the
    lab's notifications to them. Sockets opened by a thread inside main's namespace stay in that namespace."""

    def __init__(self, lab) -> None:
        self.lab = lab
        self.posts: list[dict] = []
        self.mails: list = []
        self._http: ThreadingHTTPServer | None = None
        self._smtp = None

    def start(self) -> Inboxes:
        posts = self.posts

        class Receive(BaseHTTPRequestHandler):
            def do_POST(self):
                posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._http = self.lab.net.call("main", ThreadingHTTPServer, ("127.0.0.1", 0), Receive)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self._smtp = self.lab.net.call("main", self._start_smtp)
        return self

    def _start_smtp(self):
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Message

        mails = self.mails

        class Collect(Message):
            def handle_message(self, message):
                mails.append(message)

        with socket.socket() as probe:  # aiosmtpd's controller cannot start on port 0
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        controller = Controller(Collect(), hostname="127.0.0.1", port=port)
        controller.start()  # its thread starts from this one: inside main's namespace too
        return controller

    @property
    def webhook_url(self) -> str:
        assert self._http is not None
        return f"http://127.0.0.1:{self._http.server_address[1]}/alerts"

    @property
    def smtp_port(self) -> int:
        return self._smtp.port

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._smtp is not None:
            self._smtp.stop()
