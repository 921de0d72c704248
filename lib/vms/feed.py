"""The change feed: one LISTEN connection on the VM channel, fanned out to subscribers.

Every change of a VM's state, owner or GPU health arrives as a dict (see the
trigger in ``labpipe.vms.store``). The allocator relays it to web pages (a
streamed ``/vms/events``) and to Prefect events; tests wait on it instead of
polling. If the connection drops (server restart) the feed reconnects and sends
``{"op": "resync"}`` so listeners re-read what they may have missed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import select
import threading
import time
from collections.abc import Callable, Iterator

import psycopg2
import psycopg2.extensions
from labpipe.db.target import DatabaseTarget

log = logging.getLogger(__name__)
Listener = Callable[[dict], None]


def _listen_connection(target: DatabaseTarget, channel: str):
    conn = psycopg2.connect(**target.psycopg2_kwargs(), application_name="labpipe-vms-feed", connect_timeout=10)
    conn.set_isolation_level(psycopg2.extensions.ISOLATION_LEVEL_AUTOCOMMIT)
    with conn.cursor() as cur:
        cur.execute(f'LISTEN "{channel}"')
    return conn


def _drain(conn) -> list[dict]:
    conn.poll()
    changes = []
    while conn.notifies:
        note = conn.notifies.pop(0)
        try:
            changes.append(json.loads(note.payload))
        except ValueError:
            log.warning("ignored a malformed notification on %s: %r", note.channel, note.payload[:200])
    return changes


class ChangeFeed:
    """A background thread that LISTENs on ``channel`` and calls each subscriber per change."""

    def __init__(self, target: DatabaseTarget, channel: str) -> None:
        self.target, self.channel = target, channel
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def _publish(self, change: dict) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(change)
            except Exception:  # one broken listener (a closed page, an unreachable Prefect) must not stop the others
                log.exception("VM change listener failed")

    def start(self) -> ChangeFeed:
        self._thread = threading.Thread(target=self._run, name=f"vm-feed-{self.channel}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff, first = 0.5, True
        while not self._stop.is_set():
            try:
                conn = _listen_connection(self.target, self.channel)
            except psycopg2.Error as exc:
                log.warning("VM change feed cannot connect (%s); retrying in %.1f s", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            self.connected.set()
            if not first:
                self._publish({"op": "resync"})
            first = False
            try:
                while not self._stop.is_set():
                    if select.select([conn], [], [], 0.5)[0]:
                        for change in _drain(conn):
                            self._publish(change)
            except (psycopg2.Error, OSError, ValueError) as exc:
                log.warning("VM change feed lost its connection (%s); reconnecting", exc)
                self.connected.clear()
            finally:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()


@contextlib.contextmanager
def listening(target: DatabaseTarget, channel: str) -> Iterator[Callable[[float], dict | None]]:
    """LISTEN now; yields ``next_change(timeout)`` returning the next change or None (tests, waiting clients)."""
    conn = _listen_connection(target, channel)
    pending: queue.SimpleQueue = queue.SimpleQueue()

    def next_change(timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while pending.empty():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            if select.select([conn], [], [], remaining)[0]:
                for change in _drain(conn):
                    pending.put(change)
        return pending.get()

    try:
        yield next_change
    finally:
        conn.close()
