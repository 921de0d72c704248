"""A loopback TCP proxy that counts the bytes a client sends and cuts connections on demand.

What a flaky lab network does to a desktop client, made exact: ``cut_after(n)`` drops every connection
once ``n`` more client bytes have passed (the request in flight is lost half-way), ``cut_now()`` drops the
open connections (a WebSocket included). ``sent`` counts client -> server bytes, so a test measures what a
resume really sent, HTTP headers included.
"""

from __future__ import annotations

import contextlib
import socket
import threading


class CuttingProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.sent = 0
        self.cuts = 0
        self.connections = 0
        self._budget: int | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="cutting-proxy").start()

    def cut_after(self, more_bytes: int | None) -> None:
        """Drop every connection once ``more_bytes`` more client bytes passed (None: never)."""
        with self._lock:
            self._budget = more_bytes

    def cut_now(self) -> None:
        with self._lock:
            sockets, self._open = list(self._open), set()
            self.cuts += 1
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()
        self.cut_now()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, dest: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(1 << 16):
                if counted:
                    with self._lock:
                        if self._budget is not None and len(data) >= self._budget:
                            data, cut = data[: self._budget], True
                        else:
                            cut = False
                            if self._budget is not None:
                                self._budget -= len(data)
                        self.sent += len(data)
                    if cut:
                        dest.sendall(data)
                        self.cut_after(None)
                        self.cut_now()
                        return
                dest.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open -= {source, dest}
            for s in (source, dest):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
