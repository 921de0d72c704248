"""A bounded PostgreSQL connection pool whose callers wait for a connection instead of failing.

LabLink's allocator ran out of connections at about 30 VMs: its pool raised as
soon as every connection was busy. Here a burst of requests queues for one of
``size`` connections for up to ``wait`` seconds; only a caller that waited that
long gets ``PoolExhausted`` (the allocator answers 503 with Retry-After). A
connection that broke (server restarted) is discarded and replaced.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import psycopg2
import psycopg2.extensions
from labpipe.db.target import DatabaseTarget
from labpipe.errors import DatabaseError


class PoolExhausted(DatabaseError):
    """No connection became free within the wait."""


class ConnectionPool:
    """At most ``size`` connections to ``target``, opened lazily, handed out one caller at a time."""

    def __init__(
        self, target: DatabaseTarget, size: int = 10, wait: float = 10.0, application: str = "labpipe-vms"
    ) -> None:
        self.target, self.size, self.wait = target, size, wait
        self._kwargs = {**target.psycopg2_kwargs(), "application_name": application, "connect_timeout": 10}
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[psycopg2.extensions.connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.opened = 0  # connections ever opened (tests check the bound)

    def _new(self) -> psycopg2.extensions.connection:
        try:
            conn = psycopg2.connect(**self._kwargs)
        except psycopg2.Error as exc:
            raise DatabaseError(self.target.url, f"cannot connect: {exc}".strip(), "is the server running?") from exc
        self.opened += 1
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg2.extensions.connection]:
        """A connection for one unit of work; committed on success, rolled back on error."""
        if self._closed:
            raise DatabaseError(self.target.url, "the connection pool is closed")
        if not self._slots.acquire(timeout=self.wait):
            raise PoolExhausted(
                self.target.url, f"all {self.size} connections stayed busy for {self.wait:g} s", "retry shortly"
            )
        conn = None
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = self._new()
            try:
                yield conn
                conn.commit()
            except BaseException:
                with contextlib.suppress(psycopg2.Error):
                    conn.rollback()
                raise
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if conn is not None:  # broken (server restart): drop it, the next caller opens a fresh one
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
                conn = None
            raise
        finally:
            if conn is not None and not conn.closed and not self._closed:
                with self._lock:
                    self._idle.append(conn)
            elif conn is not None:
                conn.close()
            self._slots.release()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            for conn in self._idle:
                with contextlib.suppress(psycopg2.Error):
                    conn.close()
            self._idle.clear()
