"""The ClusterStore contract (driver/cluster/base.py) as one test suite for every store.

A test module subclasses ``ClusterContract`` and provides the ``h`` fixture: a ``Ctx``
with a store on a fresh, empty key space and a way to let time pass (a fake clock for
the in-memory store, the wall clock for etcd).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from driver.cluster.base import (
    Absent,
    Compacted,
    Delete,
    DeletePrefix,
    Event,
    LeaseNotFound,
    Put,
    Unchanged,
    WatchBatch,
)


@dataclass
class Ctx:
    store: Any  # a ClusterStore that also has compact(revision)
    pass_time: Callable[[float], None]

    def eventually(self, cond: Callable[[], bool], timeout: float = 10.0, step: float = 0.1) -> None:
        """Poll ``cond``, letting ``step`` seconds pass between tries (fake or real)."""
        for _ in range(int(timeout / step) + 1):
            if cond():
                return
            self.pass_time(step)
        raise AssertionError(f"condition not met within {timeout}s")


class Collector:
    """Iterates a watch in its own thread, as the driver will."""

    def __init__(self, watch: Any) -> None:
        self.watch = watch
        self.batches: list[WatchBatch] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for batch in self.watch:
                with self._lock:
                    self.batches.append(batch)
        except BaseException as e:
            self.error = e

    def events(self) -> list[Event]:
        with self._lock:
            return [e for b in self.batches for e in b.events]

    def wait_events(self, n: int, timeout: float = 10.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        while len(self.events()) < n:
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"only {self.events()} within {timeout}s"
            time.sleep(0.02)
        return self.events()

    def wait_batch(self, pred: Callable[[WatchBatch], bool], timeout: float = 10.0) -> WatchBatch:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for b in self.batches:
                    if pred(b):
                        return b
            assert self.error is None, self.error
            assert time.monotonic() < deadline, f"no such batch within {timeout}s: {self.batches}"
            time.sleep(0.02)

    def wait_error(self, timeout: float) -> BaseException:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"watch still blocked after {timeout}s"
        assert self.error is not None, "watch ended without an error"
        return self.error

    def stop(self) -> None:
        self.watch.cancel()
        self.thread.join(5.0)


def kinds(events: list[Event]) -> list[tuple[str, bytes | None]]:
    return [(e.key, e.entry.value if e.entry else None) for e in events]


class ClusterContract:
    # -- reads and revisions -----------------------------------------------------------------
    def test_get_and_range_carry_revisions(self, h: Ctx) -> None:
        s = h.store
        assert s.get("a/x") is None
        entries, r0 = s.range("a/")
        assert entries == {}
        assert s.create("a/x", b"1")
        first = s.get("a/x")
        assert first.value == b"1" and first.mod_revision == first.create_revision > r0
        assert s.replace("a/x", b"2", first.mod_revision)
        second = s.get("a/x")
        assert second.value == b"2"
        assert second.create_revision == first.create_revision < second.mod_revision
        assert s.create("a/y", b"3") and s.create("ab", b"not under a/")
        entries, r = s.range("a/")
        assert set(entries) == {"a/x", "a/y"}
        assert entries["a/x"] == second
        assert r == s.get("ab").mod_revision  # the store's revision, not the range's newest key
        assert set(s.range("")[0]) == {"a/x", "a/y", "ab"}

    def test_create_only_if_absent(self, h: Ctx) -> None:
        s = h.store
        assert s.create("c/k", b"mine") is True
        assert s.create("c/k", b"theirs") is False
        assert s.get("c/k").value == b"mine"

    def test_replace_with_stale_revision_fails(self, h: Ctx) -> None:
        s = h.store
        s.create("r/k", b"v1")
        seen = s.get("r/k").mod_revision
        assert s.replace("r/k", b"v2", seen)
        assert s.replace("r/k", b"v3", seen) is False  # someone wrote since we read
        assert s.get("r/k").value == b"v2"
        assert s.replace("r/missing", b"x", 12345) is False
        assert s.get("r/missing") is None

    def test_delete_only_if_unchanged(self, h: Ctx) -> None:
        s = h.store
        s.create("d/k", b"v")
        rev = s.get("d/k").mod_revision
        s.replace("d/k", b"v2", rev)
        assert s.delete("d/k", rev) is False
        assert s.get("d/k") is not None
        assert s.delete("d/k", s.get("d/k").mod_revision) is True
        assert s.get("d/k") is None
        assert s.delete("d/k") is False
        s.create("d/k", b"again")
        assert s.delete("d/k") is True

    def test_delete_prefix(self, h: Ctx) -> None:
        s = h.store
        for k in ("p/1", "p/2", "p/3/deep", "px"):
            s.create(k, b"v")
        assert s.delete_prefix("p/") == 3
        assert set(s.range("")[0]) == {"px"}
        assert s.delete_prefix("p/") == 0

    # -- transactions ------------------------------------------------------------------------
    def test_txn_applies_all_writes_at_one_revision(self, h: Ctx) -> None:
        s = h.store
        s.create("t/y", b"y")
        s.create("t/old/1", b"o")
        s.create("t/old/2", b"o")
        y = s.get("t/y")
        res = s.txn(
            [Absent("t/x"), Unchanged("t/y", y.mod_revision)],
            [Put("t/x", b"x"), Delete("t/y"), DeletePrefix("t/old/"), Put("t/z", b"z")],
        )
        assert res.succeeded and res.failed == ()
        assert s.get("t/x").mod_revision == s.get("t/z").mod_revision == res.revision
        assert s.get("t/y") is None
        assert set(s.range("t/")[0]) == {"t/x", "t/z"}

    def test_txn_failure_names_the_failed_conditions(self, h: Ctx) -> None:
        s = h.store
        s.create("t/x", b"x")
        conditions = [Absent("t/x"), Unchanged("t/absent", 0), Unchanged("t/x", 1), Absent("t/other")]
        res = s.txn(conditions, [Put("t/w", b"w")])
        assert not res.succeeded
        assert res.failed == (Absent("t/x"), Unchanged("t/x", 1))  # an absent key is "unchanged since 0"
        assert s.get("t/w") is None
        assert res.revision == s.range("")[1]

    # -- leases ------------------------------------------------------------------------------
    def test_leased_key_vanishes_after_expiry(self, h: Ctx) -> None:
        s = h.store
        lease = s.grant(1)
        assert s.create("l/k", b"v", lease=lease)
        assert s.get("l/k").lease == lease
        h.eventually(lambda: s.get("l/k") is None)
        assert s.keepalive(lease) == 0
        with pytest.raises(LeaseNotFound):
            s.create("l/k", b"v", lease=lease)
        with pytest.raises(LeaseNotFound):
            s.txn([], [Put("l/k2", b"v", lease)])
        assert s.range("l/")[0] == {}
        s.revoke(lease)  # revoking a gone lease is not an error

    def test_revoke_deletes_keys_at_once(self, h: Ctx) -> None:
        s = h.store
        lease = s.grant(60)
        s.create("l/a", b"1", lease=lease)
        s.create("l/b", b"2", lease=lease)
        s.create("l/unleased", b"3")
        s.revoke(lease)
        assert set(s.range("l/")[0]) == {"l/unleased"}
        assert s.keepalive(lease) == 0

    def test_keepalive_keeps_the_lease(self, h: Ctx) -> None:
        s = h.store
        lease = s.grant(2)
        s.create("l/kept", b"v", lease=lease)
        for _ in range(5):  # 2.5 s: past the TTL
            h.pass_time(0.5)
            assert s.keepalive(lease) > 0
            assert s.get("l/kept") is not None
        h.eventually(lambda: s.get("l/kept") is None)

    def test_rewriting_a_key_without_lease_detaches_it(self, h: Ctx) -> None:
        s = h.store
        lease = s.grant(60)
        s.create("l/k", b"leased", lease=lease)
        assert s.replace("l/k", b"plain", s.get("l/k").mod_revision)
        s.revoke(lease)
        assert s.get("l/k").value == b"plain"

    # -- watch -------------------------------------------------------------------------------
    def test_watch_from_range_revision_misses_nothing(self, h: Ctx) -> None:
        s = h.store
        s.create("w/a", b"1")
        entries, rev = s.range("w/")
        assert set(entries) == {"w/a"}
        s.create("w/b", b"2")  # lands between the list and the watch
        c = Collector(s.watch("w/", rev + 1))
        try:
            s.create("w/c", b"3")
            s.create("other/d", b"not watched")
            s.create("w/e", b"4")
            events = c.wait_events(3)
            assert kinds(events) == [("w/b", b"2"), ("w/c", b"3"), ("w/e", b"4")]
            assert [e.revision for e in events] == sorted({e.revision for e in events})
            assert all(e.entry is not None and e.revision == e.entry.mod_revision for e in events)
        finally:
            c.stop()

    def test_watch_delivers_puts_deletes_and_expiry_in_order(self, h: Ctx) -> None:
        s = h.store
        _, rev = s.range("o/")
        c = Collector(s.watch("o/", rev + 1))
        try:
            lease = s.grant(1)
            s.create("o/a", b"1")
            s.replace("o/a", b"2", s.get("o/a").mod_revision)
            s.create("o/leased", b"L", lease=lease)
            s.delete("o/a")
            h.eventually(lambda: s.get("o/leased") is None)
            events = c.wait_events(5)
            assert kinds(events) == [
                ("o/a", b"1"), ("o/a", b"2"), ("o/leased", b"L"), ("o/a", None), ("o/leased", None),
            ]  # fmt: skip
            revs = [e.revision for e in events]
            assert revs == sorted(revs) and len(set(revs)) == 5
            assert all(b.revision >= b.events[-1].revision for b in c.batches if b.events)
        finally:
            c.stop()

    def test_watch_resumes_from_a_revision(self, h: Ctx) -> None:
        s = h.store
        for i in range(4):
            s.create(f"res/{i}", str(i).encode())
        resume = s.get("res/2").mod_revision
        c = Collector(s.watch("res/", resume))
        try:
            assert kinds(c.wait_events(2)) == [("res/2", b"2"), ("res/3", b"3")]
            s.delete("res/0")
            assert kinds(c.wait_events(3))[2] == ("res/0", None)
        finally:
            c.stop()

    def test_quiet_watch_reports_progress(self, h: Ctx) -> None:
        s = h.store
        _, rev = s.range("q/")
        s.create("elsewhere/x", b"moves the revision, not watched")
        current = s.range("")[1]
        c = Collector(s.watch("q/", rev + 1))
        try:
            batch = c.wait_batch(lambda b: not b.events and b.revision >= current, timeout=15.0)
            assert batch.revision == current
        finally:
            c.stop()

    def test_watch_below_compaction_horizon_raises(self, h: Ctx) -> None:
        s = h.store
        s.create("cp/a", b"1")
        old = s.get("cp/a").mod_revision
        s.replace("cp/a", b"2", old)
        s.create("cp/b", b"3")
        horizon = s.range("")[1]
        s.compact(horizon)
        with pytest.raises(Compacted) as caught:
            w = s.watch("cp/", old)
            try:
                next(iter(w))  # a store may learn it from the stream only
            finally:
                w.cancel()
        assert caught.value.compact_revision == horizon
        # The horizon itself is still watchable; a caller re-lists, then watches from there.
        c = Collector(s.watch("cp/", horizon + 1))
        try:
            s.delete("cp/b")
            assert kinds(c.wait_events(1)) == [("cp/b", None)]
        finally:
            c.stop()

    def test_cancel_unblocks_the_iterating_thread(self, h: Ctx) -> None:
        s = h.store
        _, rev = s.range("x/")
        c = Collector(s.watch("x/", rev + 1))
        s.create("x/1", b"1")
        c.wait_events(1)
        started = time.monotonic()
        c.watch.cancel()
        c.thread.join(2.0)
        assert not c.thread.is_alive()
        assert c.error is None
        assert time.monotonic() - started < 1.0
        s.create("x/2", b"after cancel")  # the store is not disturbed by it
        assert s.get("x/2") is not None
