"""A real S3 endpoint on loopback for tests, benchmarks and demos: moto's server, as a subprocess.

moto's server checks ``If-Match`` and then stores the object in two steps, so two
threads can both pass the check and the second write silently wins: exactly the
lost update the registry must never see, and one real S3 (and MinIO) does not
allow, because there the check and the write are one atomic operation. This
server therefore runs moto's WSGI application with conditional writes serialised
(one lock around any request carrying ``If-Match``/``If-None-Match`` that changes
an object); every other request is served concurrently.

``ignore_conditional_writes=True`` (``--ignore-conditional-writes``) serves a store that drops
``If-Match``/``If-None-Match`` on writes, as some S3-compatible stores and proxies do: every
conditional write "succeeds". Tests use it to check that labpipe refuses such a store.

``python -m labpipe.registry.s3server --port 9000`` runs it in the foreground.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

from labpipe.errors import ToolError

MUTATING = {"PUT", "POST", "DELETE"}


def atomic_conditional_writes(app):
    """WSGI middleware: a conditional write is checked and stored without another write in between."""
    lock = threading.Lock()

    def wrapped(environ, start_response):
        conditional = "HTTP_IF_MATCH" in environ or "HTTP_IF_NONE_MATCH" in environ
        if conditional and environ.get("REQUEST_METHOD") in MUTATING:
            with lock:
                # the body is consumed and the response built inside the lock
                return list(app(environ, start_response))
        return app(environ, start_response)

    return wrapped


def ignoring_conditional_writes(app):
    """WSGI middleware: a store that drops ``If-Match``/``If-None-Match`` on writes (a broken store, for tests)."""

    def wrapped(environ, start_response):
        if environ.get("REQUEST_METHOD") in MUTATING:
            environ.pop("HTTP_IF_MATCH", None)
            environ.pop("HTTP_IF_NONE_MATCH", None)
        return app(environ, start_response)

    return wrapped


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class LocalS3Server:
    """moto's S3 server on ``host:port`` in a child process; a context manager."""

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", *, ignore_conditional_writes: bool = False
    ) -> None:
        self.host, self.port = host, port or free_port(host)
        self.ignore_conditional_writes = ignore_conditional_writes
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> LocalS3Server:
        env = dict(os.environ, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
        # a file, not a pipe: a pipe nobody reads fills up and the server's logging blocks every request
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server, closed by stop()
        argv = [sys.executable, "-m", "labpipe.registry.s3server", "--host", self.host, "--port", str(self.port)]
        self.process = subprocess.Popen(
            argv + (["--ignore-conditional-writes"] if self.ignore_conditional_writes else []),
            env=env,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._log.seek(0)
                raise ToolError("moto server", f"exited: {self._log.read().decode(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                return self
            time.sleep(0.1)
        self.stop()
        raise ToolError("moto server", f"did not listen on {self.endpoint_url} within {timeout} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@contextlib.contextmanager
def local_s3(port: int | None = None) -> Iterator[LocalS3Server]:
    with LocalS3Server(port) as server:
        yield server


def main(argv: list[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--ignore-conditional-writes", action="store_true", help="Drop If-Match/If-None-Match on writes (tests)."
    )
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    app = atomic_conditional_writes(DomainDispatcherApplication(create_backend_app))
    if args.ignore_conditional_writes:
        app = ignoring_conditional_writes(app)
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
