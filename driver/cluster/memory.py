"""An in-memory ``ClusterStore`` with etcd's semantics, for unit tests and single-host runs.

It follows etcd 3.4 where the contract leaves room: one store-wide revision per write
that changed something, ``Unchanged(key, 0)`` holds for an absent key, a txn may not
write one key twice, expired or revoked leases delete their keys in one revision (in
key order), ``compact(R)`` keeps revision R so a watch from R still works.

Time is injectable (``clock``) so tests expire leases without sleeping: leases expire
lazily, on every call and on every quiet poll of a watch, or when ``expire_leases()``
is called.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from .base import (
    Absent,
    Compacted,
    Condition,
    Delete,
    DeletePrefix,
    Entry,
    Event,
    LeaseNotFound,
    Put,
    StoreUnavailable,
    TxnResult,
    Unchanged,
    WatchBatch,
    Write,
)

# What a watch queue carries besides batches: the end of the stream, or why it broke.
_End = object()
_Item = WatchBatch | StoreUnavailable | object


@dataclass
class _Lease:
    ttl: int
    expires_at: float
    keys: set[str] = field(default_factory=set)


class MemoryWatch:
    """Batches from one ``MemoryClusterStore.watch``; iterate from any thread."""

    def __init__(self, store: MemoryClusterStore, prefix: str, poll: float) -> None:
        self._store = store
        self.prefix = prefix
        self._poll = poll
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._done = False

    def _push(self, item: _Item) -> None:
        self._queue.put(item)

    def __iter__(self) -> Iterator[WatchBatch]:
        while not self._done:
            try:
                item = self._queue.get(timeout=self._poll)
            except queue.Empty:
                # Quiet: let leases run out on the store's clock, then report progress
                # (only if nothing arrived meanwhile, so the revision never runs ahead).
                progress = self._store._progress(self)
                if progress is not None:
                    yield progress
                continue
            if item is _End:
                return
            if isinstance(item, StoreUnavailable):
                self._done = True
                raise item
            assert isinstance(item, WatchBatch)
            yield item

    def empty(self) -> bool:
        return self._queue.empty()

    def cancel(self) -> None:
        self._store._unregister(self)
        self._done = True
        self._queue.put(_End)


class MemoryClusterStore:
    """Thread-safe; ``clock`` is seconds (monotonic) and only drives lease expiry."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, watch_poll: float = 0.2) -> None:
        self._clock = clock
        self._poll = watch_poll
        self._lock = threading.RLock()
        self._kv: dict[str, Entry] = {}
        self._revision = 1  # etcd's empty store answers revision 1 too
        self._history: list[Event] = []
        self._horizon = 0
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x694D0001)
        self._watches: list[MemoryWatch] = []
        self._down = False

    # -- test controls --------------------------------------------------------------
    def expire_leases(self) -> None:
        with self._lock:
            self._expire()

    def compact(self, revision: int) -> None:
        """Forget history before ``revision`` (etcd ``compact``): watches from below it fail."""
        with self._lock:
            self._check_up()
            if revision <= self._horizon:
                raise Compacted(self._horizon)
            if revision > self._revision:
                raise ValueError(f"revision {revision} is in the future (current {self._revision})")
            self._horizon = revision
            self._history = [e for e in self._history if e.revision >= revision]

    def set_unavailable(self, down: bool) -> None:
        """Simulate an outage: calls raise StoreUnavailable and open watches break."""
        with self._lock:
            self._down = down
            if down:
                for w in self._watches:
                    w._push(StoreUnavailable("etcd (in-memory store) unavailable: stream broken"))
                self._watches.clear()

    # -- reads ------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        with self._lock:
            self._enter()
            return self._kv.get(key)

    def range(self, prefix: str) -> tuple[dict[str, Entry], int]:
        with self._lock:
            self._enter()
            return {k: e for k, e in self._kv.items() if k.startswith(prefix)}, self._revision

    # -- writes -----------------------------------------------------------------------
    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        return self.txn([Absent(key)], [Put(key, value, lease)]).succeeded

    def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        return self.txn([Unchanged(key, mod_revision)], [Put(key, value, lease)]).succeeded

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        with self._lock:
            self._enter()
            entry = self._kv.get(key)
            if entry is None or (mod_revision is not None and entry.mod_revision != mod_revision):
                return False
            self._commit([Delete(key)])
            return True

    def delete_prefix(self, prefix: str) -> int:
        with self._lock:
            self._enter()
            return len(self._commit([DeletePrefix(prefix)]))

    def txn(self, conditions: Sequence[Condition], writes: Sequence[Write]) -> TxnResult:
        _check_disjoint(writes)
        with self._lock:
            self._enter()
            failed = tuple(c for c in conditions if not self._holds(c))
            if failed:
                return TxnResult(False, self._revision, failed)
            self._commit(writes)
            return TxnResult(True, self._revision)

    # -- leases -----------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        with self._lock:
            self._enter()
            ttl = max(ttl, 1)
            lease_id = next(self._lease_ids)
            self._leases[lease_id] = _Lease(ttl, self._clock() + ttl)
            return lease_id

    def keepalive(self, lease: int) -> int:
        with self._lock:
            self._enter()
            held = self._leases.get(lease)
            if held is None:
                return 0
            held.expires_at = self._clock() + held.ttl
            return held.ttl

    def revoke(self, lease: int) -> None:
        with self._lock:
            self._enter()
            self._drop_lease(lease)

    # -- watch ------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int) -> MemoryWatch:
        with self._lock:
            self._enter()
            if start_revision < self._horizon:
                raise Compacted(self._horizon)
            w = MemoryWatch(self, prefix, self._poll)
            by_rev: dict[int, list[Event]] = {}
            for e in self._history:
                if e.revision >= start_revision and e.key.startswith(prefix):
                    by_rev.setdefault(e.revision, []).append(e)
            for rev, events in by_rev.items():
                w._push(WatchBatch(tuple(events), rev))
            self._watches.append(w)
            return w

    def close(self) -> None:
        with self._lock:
            for w in self._watches:
                w._push(_End)
            self._watches.clear()

    # -- internals (all called with the lock held) -------------------------------------
    def _check_up(self) -> None:
        if self._down:
            raise StoreUnavailable("etcd (in-memory store) unavailable: simulated outage")

    def _enter(self) -> None:
        self._check_up()
        self._expire()

    def _expire(self) -> None:
        now = self._clock()
        for lease_id in [i for i, le in self._leases.items() if le.expires_at <= now]:
            self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        held = self._leases.pop(lease_id, None)
        if held is not None and held.keys:
            self._commit([Delete(k) for k in sorted(held.keys)])

    def _holds(self, c: Condition) -> bool:
        entry = self._kv.get(c.key)
        if isinstance(c, Absent):
            return entry is None
        return (entry.mod_revision if entry else 0) == c.mod_revision

    def _commit(self, writes: Sequence[Write]) -> list[Event]:
        """Apply ``writes`` at one new revision (none if nothing changed); notify watches."""
        for w in writes:
            if isinstance(w, Put) and w.lease and w.lease not in self._leases:
                raise LeaseNotFound(f"etcd (in-memory store): lease {w.lease:x} not found")
        rev = self._revision + 1
        events: list[Event] = []
        for w in writes:
            if isinstance(w, Put):
                events.append(self._put(w, rev))
            else:
                keys = [w.key] if isinstance(w, Delete) else sorted(k for k in self._kv if k.startswith(w.prefix))
                events.extend(self._remove(k, rev) for k in keys if k in self._kv)
        if events:
            self._revision = rev
            self._history.extend(events)
            for watch in self._watches:
                mine = tuple(e for e in events if e.key.startswith(watch.prefix))
                if mine:
                    watch._push(WatchBatch(mine, rev))
        return events

    def _put(self, w: Put, rev: int) -> Event:
        old = self._kv.get(w.key)
        if old is not None and old.lease and old.lease != w.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(w.key)
        if w.lease:
            self._leases[w.lease].keys.add(w.key)
        entry = Entry(w.value, rev, old.create_revision if old else rev, w.lease)
        self._kv[w.key] = entry
        return Event(w.key, entry, rev)

    def _remove(self, key: str, rev: int) -> Event:
        old = self._kv.pop(key)
        if old.lease in self._leases:
            self._leases[old.lease].keys.discard(key)
        return Event(key, None, rev)

    def _progress(self, w: MemoryWatch) -> WatchBatch | None:
        with self._lock:
            if not self._down:
                self._expire()
            # Under the lock nothing is being pushed, so an empty queue means every
            # event up to the current revision has been delivered.
            if w not in self._watches or not w.empty():
                return None
            return WatchBatch((), self._revision)

    def _unregister(self, w: MemoryWatch) -> None:
        with self._lock:
            if w in self._watches:
                self._watches.remove(w)


def _check_disjoint(writes: Sequence[Write]) -> None:
    """etcd refuses a txn that puts one key twice or puts a key it also deletes."""
    puts = [w.key for w in writes if isinstance(w, Put)]
    if len(set(puts)) != len(puts):
        raise ValueError("txn writes one key twice")
    for w in writes:
        if isinstance(w, Delete) and w.key in puts:
            raise ValueError(f"txn puts and deletes {w.key!r}")
        if isinstance(w, DeletePrefix) and any(k.startswith(w.prefix) for k in puts):
            raise ValueError(f"txn puts a key under the prefix it deletes ({w.prefix!r})")
