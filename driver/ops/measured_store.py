"""A ``ClusterStore`` decorator: times every call, counts failures, and remembers when
etcd last answered, so metrics and status know the store's health without calling it.

The background threads (lease renewal every ``host-ttl``/3, the peer watch's progress
every few seconds) keep these facts fresh; a request for status only reads them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

from driver.cluster.base import ClusterStore, Compacted, Condition, Entry, TxnResult, Watch, WatchBatch, Write
from driver.ops.telemetry import DriverMetrics

T = TypeVar("T")


class StoreHealth:
    """What the last calls said about the store (monotonic times)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.last_ok: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_watch_batch: float | None = None

    def ok(self) -> None:
        with self._lock:
            self.last_ok = time.monotonic()

    def failed(self, err: Exception) -> None:
        with self._lock:
            self.last_error, self.last_error_at = f"{type(err).__name__}: {err}", time.monotonic()

    def batch(self) -> None:
        with self._lock:
            self.last_watch_batch = self.last_ok = time.monotonic()

    @property
    def answering(self) -> bool | None:
        """Whether the latest call succeeded; None before any call."""
        with self._lock:
            if self.last_ok is None and self.last_error_at is None:
                return None
            return (self.last_ok or 0.0) >= (self.last_error_at or 0.0)


class MeasuredStore:
    def __init__(
        self, inner: ClusterStore, metrics: DriverMetrics, on_keys: Callable[[Iterable[str]], None] | None = None
    ) -> None:
        self.inner = inner
        self.metrics = metrics
        self.health = StoreHealth()
        # Told the keys of every listing and watch event (who was seen when, for status).
        self.on_keys = on_keys or (lambda keys: None)

    def __repr__(self) -> str:
        return f"MeasuredStore({self.inner!r})"

    def _call(self, op: str, fn: Callable[[], T]) -> T:
        began = time.perf_counter()
        try:
            result = fn()
        except Compacted:
            # A compacted watch start is etcd answering (with news), not etcd failing.
            self.health.ok()
            raise
        except Exception as err:
            self.metrics.etcd_errors.inc(op)
            self.health.failed(err)
            raise
        finally:
            self.metrics.etcd_seconds.observe(time.perf_counter() - began, op)
        self.health.ok()
        return result

    def get(self, key: str) -> Entry | None:
        return self._call("get", lambda: self.inner.get(key))

    def range(self, prefix: str) -> tuple[dict[str, Entry], int]:
        entries, revision = self._call("range", lambda: self.inner.range(prefix))
        self.on_keys(entries)
        return entries, revision

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        return self._call("create", lambda: self.inner.create(key, value, lease))

    def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        return self._call("replace", lambda: self.inner.replace(key, value, mod_revision, lease))

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        return self._call("delete", lambda: self.inner.delete(key, mod_revision))

    def delete_prefix(self, prefix: str) -> int:
        return self._call("delete_prefix", lambda: self.inner.delete_prefix(prefix))

    def txn(self, conditions: Sequence[Condition], writes: Sequence[Write]) -> TxnResult:
        return self._call("txn", lambda: self.inner.txn(conditions, writes))

    def grant(self, ttl: int) -> int:
        return self._call("grant", lambda: self.inner.grant(ttl))

    def keepalive(self, lease: int) -> int:
        return self._call("keepalive", lambda: self.inner.keepalive(lease))

    def revoke(self, lease: int) -> None:
        self._call("revoke", lambda: self.inner.revoke(lease))

    def watch(self, prefix: str, start_revision: int) -> Watch:
        return MeasuredWatch(self, self._call("watch", lambda: self.inner.watch(prefix, start_revision)))

    def close(self) -> None:
        self.inner.close()


class MeasuredWatch:
    """A watch whose batches mark the store as answering and whose failures are counted."""

    def __init__(self, store: MeasuredStore, inner: Watch) -> None:
        self.store = store
        self.inner = inner

    def __iter__(self) -> Iterator[WatchBatch]:
        try:
            for batch in self.inner:
                self.store.health.batch()
                if batch.events:
                    self.store.on_keys(ev.key for ev in batch.events)
                yield batch
        except Compacted:
            raise
        except Exception as err:
            self.store.metrics.etcd_errors.inc("watch")
            self.store.health.failed(err)
            raise

    def cancel(self) -> None:
        self.inner.cancel()
