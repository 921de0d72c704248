"""Request limits per token: a sliding window of requests per minute, and parts uploading at once."""

from __future__ import annotations

import collections
import contextlib
import math
import threading
import time
from collections.abc import Iterator

from labpipe.seg.service.errors import ServiceError


class RateLimiter:
    """At most ``limit`` requests in any ``window`` seconds per key (a token id)."""

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._seen: dict[str, collections.deque] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float | None = None) -> None:
        """Count one request; 429 with Retry-After (seconds until the oldest one leaves the window) when over."""
        now = time.monotonic() if now is None else now
        with self._lock:
            seen = self._seen.setdefault(key, collections.deque())
            while seen and seen[0] <= now - self.window:
                seen.popleft()
            if len(seen) >= self.limit:
                wait = max(1, math.ceil(seen[0] + self.window - now))
                raise ServiceError(
                    429,
                    "rate_limited",
                    f"more than {self.limit} requests in {self.window:.0f} s",
                    f"wait {wait} s",
                    retryable=True,
                    headers={"Retry-After": str(wait)},
                )
            seen.append(now)
            if len(self._seen) > 10000:  # forget idle tokens
                self._seen = {k: v for k, v in self._seen.items() if v and v[-1] > now - self.window}


class InFlight:
    """At most ``limit`` concurrent holders per key (upload parts of one token)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._count: collections.Counter = collections.Counter()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._lock:
            if self._count[key] >= self.limit:
                raise ServiceError(
                    429,
                    "too_many_parts_in_flight",
                    f"{self.limit} parts are already uploading",
                    "send fewer parts at once",
                    retryable=True,
                    headers={"Retry-After": "1"},
                )
            self._count[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._count[key] -= 1
                if not self._count[key]:
                    del self._count[key]
