"""What every flow needs: its configuration blocks, the lab database, artifacts and GPU slots.

Blocks are loaded by name (``default`` unless a deployment parameter says
otherwise); with no Prefect server or no saved block (a notebook on a laptop)
the settings' defaults under ``$LABPIPE_HOME`` are used instead.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import io
import threading
import time
from collections.abc import Iterator
from typing import TypeVar

from labpipe.compute import DaskSettings
from labpipe.config import get_settings
from labpipe.db.connect import LabDatabase, open_lab_database
from labpipe.db.settings import DatabaseSettings
from labpipe.layout import Layout
from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError

B = TypeVar("B")


def logger():
    """The run logger inside a flow or task, the module logger elsewhere (``.fn()`` calls in tests)."""
    import logging

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("labpipe.flows")


def load_block(block_cls: type[B], name: str | None, default: B) -> B:
    """Load a saved block document, or fall back to ``default`` when there is none (or no server)."""
    if not name:
        return default
    try:
        return block_cls.load(name)
    except Exception as exc:  # no server, no such document, or block type not registered
        logger().debug("block %s/%s not loaded (%s); using defaults", block_cls.__name__, name, exc)
        return default


def layout(name: str | None = "default") -> Layout:
    from labpipe.blocks import StorageLayout

    return load_block(StorageLayout, name, Layout.default(get_settings().home)).model_copy()


def database_settings(name: str | None = "default") -> DatabaseSettings:
    from labpipe.blocks import LabDatabase as LabDatabaseBlock

    settings = get_settings()
    fallback = DatabaseSettings(url=settings.database_url, schema_prefix=settings.schema_prefix)
    return load_block(LabDatabaseBlock, name, fallback)


def lab_database(db_block: str | None = "default", layout_block: str | None = "default") -> LabDatabase:
    """The lab database with the object store at the layout's blob root."""
    return open_lab_database(database_settings(db_block), blobs=layout(layout_block).blobs)


def dask_settings(name: str | None = "default") -> DaskSettings:
    from labpipe.blocks import DaskCluster

    settings = get_settings()
    return load_block(DaskCluster, name, DaskSettings(address=settings.dask_address))


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


def png_markdown(figure, alt: str) -> str:
    """Embed a matplotlib figure in markdown as a PNG data URI (artifacts show it inline)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"![{alt}](data:image/png;base64,{encoded})"


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "_none_\n"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")).replace("|", "\\|") for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def gpu_slot(occupy: int = 1) -> Iterator[None]:
    """Hold ``occupy`` slots of the global ``gpu`` concurrency limit (one job per GPU)."""
    with concurrency("gpu", occupy=occupy):
        yield
