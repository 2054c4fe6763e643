"""Requests as they are served: the ones in flight now (for status) and their metrics.

Fed from one place only, the app's endpoint wrapper, so every verb is counted the same
way and no handler counts for itself.
"""

from __future__ import annotations

import itertools
import threading
import time

from driver.ops.telemetry import DriverMetrics


class Activity:
    def __init__(self, metrics: DriverMetrics) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._open: dict[int, tuple[str, float]] = {}

    def started(self, verb: str) -> int:
        token = next(self._ids)
        with self._lock:
            self._open[token] = (verb, time.monotonic())
        return token

    def finished(self, token: int, status: int) -> None:
        with self._lock:
            verb, began = self._open.pop(token)
        m = self.metrics
        m.requests.inc(verb)
        m.request_seconds.observe(time.monotonic() - began, verb)
        if status >= 400:
            m.request_errors.inc(verb, str(status))

    def in_flight(self, skip: str = "") -> list[tuple[str, float]]:
        """(verb, seconds so far) of each request being served, oldest first."""
        now = time.monotonic()
        with self._lock:
            items = sorted(self._open.values(), key=lambda v: v[1])
        return [(verb, now - began) for verb, began in items if verb != skip]
