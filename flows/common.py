"""Prefect helpers every flow uses: the run logger, progress and summary artifacts, GPU slots.

Configuration is resolved in ``labpipe.blocks``; markdown helpers live in ``labpipe.markdown``.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Iterator

from labpipe.markdown import markdown_table, png_markdown  # noqa: F401 - re-exported for the flows
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError


def logger():
    """The run logger inside a flow or task, the module logger elsewhere (``.fn()`` calls in tests)."""
    import logging

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("labpipe.flows")


class Progress:
    """A Prefect progress artifact, callable as ``progress(done, total)`` from any code (lib takes a callable).

    Updates are sent by a background thread at most every ``every`` seconds, so a slow
    or locked Prefect API never stalls the work that reports; the final update
    (``done >= total``) and ``close()`` wait for it to be sent. Outside a run it does nothing.
    """

    def __init__(self, description: str, *, key: str | None = None, every: float = 2.0) -> None:
        self.description, self.every = description, every
        self._latest: tuple[int, int] | None = None
        self._sent: tuple[int, int] | None = None
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.artifact_id = create_progress_artifact(0.0, key=key, description=description)
        except MissingContextError:
            self.artifact_id = None
            return
        self._thread = threading.Thread(target=contextvars.copy_context().run, args=(self._loop,), daemon=True)
        self._thread.start()

    def __call__(self, done: int, total: int) -> None:
        if self.artifact_id is None:
            return
        self._latest = (done, total)
        if done >= total:
            self._send()  # the last figure is worth waiting for
        else:
            self._wake.set()

    def _send(self) -> None:
        with self._lock:
            latest = self._latest
            if latest is None or latest == self._sent:
                return
            done, total = latest
            with contextlib.suppress(Exception):  # a progress bar is never worth failing the work for
                update_progress_artifact(
                    self.artifact_id, 100.0 * done / max(total, 1), f"{self.description}: {done}/{total}"
                )
            self._sent = latest

    def _loop(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            self._send()
            time.sleep(self.every)

    def close(self) -> None:
        if self.artifact_id is None:
            return
        self._closed = True
        self._wake.set()
        self._send()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def publish_markdown(markdown: str, *, key: str, description: str) -> None:
    """A markdown summary artifact on the current run (nothing outside a run)."""
    with contextlib.suppress(MissingContextError):
        create_markdown_artifact(markdown, key=key, description=description)


GPU_LEASE_S = 60


@contextlib.contextmanager
def gpu_slot(occupy: int = 1) -> Iterator[None]:
    """Hold ``occupy`` slots of the global ``gpu`` concurrency limit (one job per GPU).

    The slots are a lease the holder renews; a holder whose host died stops renewing, and its slots come back
    after ``GPU_LEASE_S`` (Prefect's 300 s default kept the GPU idle for five minutes after a host's death).
    """
    with concurrency("gpu", occupy=occupy, lease_duration=GPU_LEASE_S):
        yield
