"""EtcdStore when members fail: every call bounded, failover to the members left,
outages reported as StoreUnavailable (writes never retried), recovery without restart.

Timings are printed (run with -s to see them) and asserted with generous bounds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from driver.cluster.base import Absent, Indeterminate, Put, StoreUnavailable
from driver.cluster.etcd import EtcdStore
from tests.cluster.conftest import etcd_cluster, fresh_prefix
from tests.cluster.contract import Collector
from tests.lab import EtcdCluster, Netns

TIMEOUT = 2.0
BOUND = TIMEOUT + 2.0


@pytest.fixture(scope="module")
def cluster(cluster_ns: Netns) -> Iterator[EtcdCluster]:
    with etcd_cluster(cluster_ns, 22379, 22380) as c:
        yield c


@pytest.fixture
def healed(cluster: EtcdCluster) -> Iterator[EtcdCluster]:
    """The cluster, with every member running and healthy again after the test."""
    yield cluster
    for i, m in enumerate(cluster.members):
        if m.paused:
            cluster.resume(i)
        if not m.alive():
            cluster.start(i, wait=False)
    cluster.wait_healthy()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.monotonic()
    return fn(), time.monotonic() - t


def store_on(endpoints: list[str], **kw: Any) -> EtcdStore:
    return EtcdStore(endpoints, prefix=fresh_prefix(), timeout=TIMEOUT, progress_interval=1.0, **kw)


def leader_of(cluster: EtcdCluster) -> int:
    deadline = time.monotonic() + 10
    while (i := cluster.leader()) is None:
        assert time.monotonic() < deadline, "no leader"
        time.sleep(0.1)
    return i


def all_calls(s: EtcdStore, lease: int) -> dict[str, Callable[[], Any]]:
    return {
        "get": lambda: s.get("k"),
        "range": lambda: s.range(""),
        "create": lambda: s.create("k2", b"v"),
        "replace": lambda: s.replace("k", b"v2", 1),
        "delete": lambda: s.delete("k"),
        "delete_prefix": lambda: s.delete_prefix("x/"),
        "txn": lambda: s.txn([Absent("k3")], [Put("k3", b"v")]),
        "grant": lambda: s.grant(5),
        "keepalive": lambda: s.keepalive(lease),
        "revoke": lambda: s.revoke(lease),
        "watch": lambda: s.watch("", 1),
    }


def run_concurrently(calls: dict[str, Callable[[], Any]]) -> dict[str, tuple[BaseException | None, float]]:
    """Each call in its own thread (the store is used that way): the outcome and duration."""
    out: dict[str, tuple[BaseException | None, float]] = {}

    def one(name: str, fn: Callable[[], Any]) -> None:
        t = time.monotonic()
        try:
            fn()
            out[name] = (None, time.monotonic() - t)
        except BaseException as e:
            out[name] = (e, time.monotonic() - t)

    threads = [threading.Thread(target=one, args=item) for item in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND + 5)
    return out


def assert_all_unavailable(outcomes: dict[str, tuple[BaseException | None, float]], endpoint: str) -> float:
    assert len(outcomes) == 11, outcomes
    for name, (err, took) in outcomes.items():
        assert isinstance(err, StoreUnavailable), (name, err)
        assert "etcd" in str(err) and endpoint in str(err), (name, str(err))
        assert took < BOUND, (name, took)
    return max(took for _, took in outcomes.values())


def test_no_etcd_at_all(cluster_ns: Netns) -> None:
    """The driver must start and answer (503) with no etcd anywhere."""
    nowhere = ["http://127.0.0.1:1", "http://127.0.0.1:2"]
    s, took = timed(lambda: store_on(nowhere))
    assert took < 0.5, took
    try:
        worst = assert_all_unavailable(run_concurrently(all_calls(s, 1234)), "http://127.0.0.1:1")
        print(f"\nno etcd: construction {took * 1000:.0f} ms, slowest failing call {worst:.2f} s")
        with pytest.raises(StoreUnavailable) as err:
            s.create("k", b"v")
        assert not isinstance(err.value, Indeterminate)  # nothing was sent: known not written
    finally:
        s.close()


def test_one_member_killed_calls_still_succeed(healed: EtcdCluster) -> None:
    cluster = healed
    lead = leader_of(cluster)
    # Worst case: the store is talking to the leader when it dies.
    order = [lead] + [i for i in range(3) if i != lead]
    s = store_on([cluster.endpoints[i] for i in order])
    try:
        assert s.create("before", b"v")
        cluster.kill(lead)
        entry, first = timed(lambda: s.get("before"))  # may retry once, on another member
        assert entry is not None and entry.value == b"v"
        ok, write = timed(lambda: s.create("after", b"v"))
        assert ok
        rest = {name: timed(fn)[1] for name, fn in all_calls(s, s.grant(5)).items()}
        print(f"\nleader killed: first read {first:.2f} s, then a write {write * 1000:.0f} ms, "
              f"slowest other call {max(rest.values()) * 1000:.0f} ms")
        assert first < TIMEOUT + 0.5 and max(rest.values()) < TIMEOUT
        # The member rejoins with its data dir and serves on its own.
        cluster.start(lead)
        alone = store_on([cluster.endpoints[lead]])
        try:
            entry = alone.get("after")  # not on this store's prefix: a different key space
            assert entry is None
            assert alone.create("back", b"v")
        finally:
            alone.close()
    finally:
        s.close()


def test_write_right_after_leader_death_is_never_retried(healed: EtcdCluster) -> None:
    """The write in flight when the leader dies: it succeeds or raises Indeterminate (a
    caller re-reads); it is not retried behind the caller's back, which could turn its
    own committed create into a "lost the race"."""
    cluster = healed
    lead = leader_of(cluster)
    s = store_on([cluster.endpoints[i] for i in [lead] + [i for i in range(3) if i != lead]])
    try:
        assert s.create("warm", b"v")
        cluster.kill(lead)
        try:
            outcome, took = timed(lambda: s.create("racy", b"mine"))
            assert outcome is True
        except Indeterminate as e:
            took = TIMEOUT
            print(f"\nwrite after leader death: indeterminate ({e})")
        assert took <= BOUND
        entry = s.get("racy")  # what a caller does next: read to learn the truth
        if entry is not None:
            assert entry.value == b"mine"
        print(f"\nwrite after leader death: committed={entry is not None}")
        ok, after = timed(lambda: s.create("next", b"v"))
        assert ok
        print(f"\nwrite after leader death: {took:.2f} s, the next write {after * 1000:.0f} ms")
    finally:
        s.close()


def test_frozen_member_read_retries_elsewhere_and_watch_breaks(healed: EtcdCluster) -> None:
    """A member that keeps its TCP connections but answers nothing (SIGSTOP): a read
    moves to another member within the deadline; a watch on it ends, it does not hang."""
    cluster = healed
    s = store_on(cluster.endpoints)
    try:
        assert s.create("k", b"v")  # connected to member 0
        _, rev = s.range("")
        c = Collector(s.watch("", rev + 1))
        cluster.pause(0)
        entry, took = timed(lambda: s.get("k"))
        assert entry is not None and took < TIMEOUT + 0.5
        err = c.wait_error(timeout=1.0 + TIMEOUT + 2.0)  # progress interval + deadline
        assert isinstance(err, StoreUnavailable) and "etcd" in str(err)
        print(f"\nfrozen member: read answered after {took:.2f} s, watch broke: {err}")
        assert s.create("k2", b"v")  # writes go to the member the read found
    finally:
        s.close()


def test_all_members_down_then_back(healed: EtcdCluster) -> None:
    cluster = healed
    s = store_on(cluster.endpoints)
    try:
        lease = s.grant(30)
        assert s.create("k", b"v", lease=lease)
        _, rev = s.range("")
        c = Collector(s.watch("", rev + 1))
        t = time.monotonic()
        for i in range(3):
            cluster.kill(i)
        err = c.wait_error(timeout=BOUND)
        broke = time.monotonic() - t
        assert isinstance(err, StoreUnavailable)
        worst = assert_all_unavailable(run_concurrently(all_calls(s, lease)), cluster.endpoints[0])
        for i in range(3):
            cluster.start(i, wait=False)
        cluster.wait_healthy()
        t = time.monotonic()
        deadline = t + 10
        while True:  # the same store, no restart: its channels reconnect on their own
            try:
                assert s.get("k") is not None
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        back = time.monotonic() - t
        print(f"\nall down: watch broke after {broke:.2f} s, slowest failing call {worst:.2f} s; "
              f"healthy again -> first answer {back:.2f} s")
        assert back < BOUND
        assert s.keepalive(lease) > 0  # the lease survived the outage (etcd restores its TTL)
        _, rev = s.range("")
        c = Collector(s.watch("", rev + 1))
        s.delete("k")
        assert c.wait_events(1)[0].entry is None
        c.stop()
    finally:
        s.close()


def test_hostname_endpoints(cluster: EtcdCluster) -> None:
    """Names go through the resolver, one channel each, same failover as IP literals."""
    urls = [u.replace("127.0.0.1", "localhost") for u in cluster.endpoints]
    s = store_on(["http://localhost:1", *urls])
    try:
        assert s.create("k", b"v")
        assert s.get("k") is not None
    finally:
        s.close()
