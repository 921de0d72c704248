"""Run the allocator: the VM store, its change feed, the app, uvicorn.

``labpipe vms serve`` calls ``run_allocator`` with the Prefect launcher and a
Prefect event sink; tests and a Prefect-less lab pass the inline launcher. The
first start writes an admin token to ``$LABPIPE_HOME/vms/admin-token`` (0600).
Everything the allocator knows is in PostgreSQL, so killing and restarting it
loses nothing; clients keep retrying and carry on when it is back.

Bearer tokens never cross a network in clear: the allocator serves TLS itself
(``certfile``/``keyfile``) or listens on loopback only, behind a reverse proxy
that terminates TLS; plain HTTP on another address is refused unless asked for
by name (``allow_plain_http``, for a link that is encrypted below HTTP).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from labpipe.config import get_settings
from labpipe.db.settings import DatabaseSettings
from labpipe.errors import ConfigError, ToolError
from labpipe.vms.app import create_app
from labpipe.vms.feed import ChangeFeed
from labpipe.vms.launch import InlineLauncher, Launcher
from labpipe.vms.models import is_loopback
from labpipe.vms.settings import AllocatorSettings
from labpipe.vms.store import VmStore

log = logging.getLogger("labpipe.vms.allocator")


def admin_token_path(home: Path | None = None) -> Path:
    return Path(home or get_settings().home) / "vms" / "admin-token"


def check_listen(
    host: str,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    *,
    allow_plain_http: bool = False,
    service: str = "the allocator",
    doc: str = "docs/vms.md",
) -> None:
    """Refuse to take bearer tokens in clear from other hosts, and a TLS key others can read."""
    if (certfile is None) != (keyfile is None):
        raise ConfigError("--certfile/--keyfile", "TLS needs both the certificate and its private key")
    if keyfile is not None:
        key = Path(keyfile)
        if not key.is_file():
            raise ConfigError(key, "no such TLS key file")
        if stat.S_IMODE(key.stat().st_mode) & 0o077:
            raise ConfigError(key, "the TLS private key is readable by others", f"chmod 600 {key}")
        if not Path(certfile).is_file():
            raise ConfigError(certfile, "no such TLS certificate file")
        return
    if is_loopback(host) or allow_plain_http:
        return
    raise ConfigError(
        host,
        f"{service} would take bearer tokens over plain HTTP on an address other hosts reach",
        "give --certfile and --keyfile to serve TLS, or bind 127.0.0.1 behind a reverse proxy that terminates "
        f"TLS ({doc})",
    )


def server_config(app, host: str, port: int, certfile: Path | None, keyfile: Path | None, **options):
    """uvicorn's config for the allocator: TLS when given a certificate and key."""
    import uvicorn

    tls = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)} if certfile else {}
    return uvicorn.Config(app, host=host, port=port, log_level="warning", **tls, **options)


def run_allocator(
    settings: AllocatorSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    db_settings: DatabaseSettings | None = None,
    launcher: Callable[[VmStore], Launcher] | None = None,
    on_change: list[Callable[[dict], None]] | None = None,
    ready: Callable[[str, Path], None] | None = None,
    certfile: Path | None = None,
    keyfile: Path | None = None,
    allow_plain_http: bool = False,
) -> None:
    """Serve until SIGINT/SIGTERM. ``launcher`` builds the flow launcher from the store (default: inline).

    With ``certfile`` and ``keyfile`` it serves HTTPS; without them it refuses any
    address but loopback unless ``allow_plain_http`` (see ``check_listen``).
    """
    import uvicorn

    check_listen(host, certfile, keyfile, allow_plain_http=allow_plain_http)
    store = VmStore.open(settings, db_settings)
    token_file = admin_token_path()
    _, issued = store.ensure_admin_token(token_file)
    log.info("VM tables in schema %s on %s; admin token %s in %s", store.schema, store.target.url,
             "written" if issued else "kept", token_file)  # fmt: skip
    feed = ChangeFeed(store.target, store.channel).start()
    chosen = launcher(store) if launcher else InlineLauncher(store, settings, settings.allocator_url)
    app = create_app(store, settings, launcher=chosen, feed=feed, on_change=on_change)
    if ready:
        ready(f"{'https' if certfile else 'http'}://{host}:{port}", token_file)
    config = server_config(
        app, host, port, certfile, keyfile, backlog=2048, timeout_graceful_shutdown=3, access_log=False
    )
    try:
        uvicorn.Server(config).run()
    finally:
        feed.stop()
        if isinstance(chosen, InlineLauncher):
            chosen.shutdown()
        store.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def labpipe_program() -> str:
    candidate = Path(sys.executable).parent / "labpipe"
    return str(candidate) if candidate.exists() else (shutil.which("labpipe") or "labpipe")


class AllocatorProcess:
    """``labpipe vms serve`` as a child process (the demo and the fault tests kill and restart it)."""

    def __init__(
        self, home: Path, *, port: int | None = None, launch: str = "inline", events: bool = False,
        env: dict | None = None, block: str | None = None, certfile: Path | None = None, keyfile: Path | None = None,
        ca_file: Path | None = None,
    ) -> None:  # fmt: skip
        self.home, self.launch, self.events = Path(home), launch, events
        self.certfile, self.keyfile, self.ca_file = certfile, keyfile, ca_file
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {}), "LABPIPE_HOME": str(self.home)}
        self.block = block
        self.process: subprocess.Popen | None = None
        self.log_file = self.home / "logs" / f"vms-allocator-{self.port}.log"

    @property
    def url(self) -> str:
        return f"{'https' if self.certfile else 'http'}://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return admin_token_path(self.home).read_text().strip()

    def start(self, timeout: float = 60.0) -> AllocatorProcess:
        cmd = [
            labpipe_program(), "vms", "serve", "--port", str(self.port), "--launch", self.launch,
            "--allocator-url", self.url, "--events" if self.events else "--no-events",
        ]  # fmt: skip
        if self.block is not None:  # "" means: no block, the defaults
            cmd += ["--block", self.block]
        if self.certfile:
            cmd += ["--certfile", str(self.certfile), "--keyfile", str(self.keyfile)]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log_handle:
            self.process = subprocess.Popen(
                cmd, env=self.env, stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ToolError("labpipe vms serve", f"exited {self.process.returncode}: {self._tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2, verify=self._verify()).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise ToolError("labpipe vms serve", f"not healthy at {self.url} after {timeout:g} s: {self._tail()}")

    def _verify(self):
        import ssl

        return ssl.create_default_context(cafile=str(self.ca_file)) if self.ca_file else True

    def _tail(self) -> str:
        return self.log_file.read_text(errors="replace")[-3000:] if self.log_file.exists() else ""

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown code runs."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()


class BackgroundAllocator:
    """The allocator app on uvicorn in a thread of this process (a notebook, a test, a demo step).

    Same app, feed and inline launcher as ``labpipe vms serve``; the port is
    free when chosen. ``close()`` stops it.
    """

    def __init__(
        self,
        store: VmStore,
        settings: AllocatorSettings,
        *,
        port: int | None = None,
        certfile: Path | None = None,
        keyfile: Path | None = None,
    ) -> None:
        import threading

        import uvicorn

        check_listen("127.0.0.1", certfile, keyfile)
        self.port = port or free_port()
        self.url = f"{'https' if certfile else 'http'}://127.0.0.1:{self.port}"
        self.settings = settings.model_copy(update={"allocator_url": self.url})
        self.store = store
        self.feed = ChangeFeed(store.target, store.channel).start()
        self.launcher = InlineLauncher(store, self.settings, self.url)
        self.app = create_app(store, self.settings, launcher=self.launcher, feed=self.feed)
        config = server_config(self.app, "127.0.0.1", self.port, certfile, keyfile, timeout_graceful_shutdown=1)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="vm-allocator", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            self.close()
            raise ToolError("allocator", f"did not start on {self.url}")
        self.feed.connected.wait(10)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.launcher.shutdown()
        self.feed.stop()
