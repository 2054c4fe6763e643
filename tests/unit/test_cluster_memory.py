"""The cluster store contract against the in-memory store, plus what only it offers."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from driver.cluster.base import Put, StoreUnavailable
from driver.cluster.memory import MemoryClusterStore
from tests.cluster.contract import ClusterContract, Collector, Ctx


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Iterator[MemoryClusterStore]:
    s = MemoryClusterStore(clock=clock, watch_poll=0.05)
    yield s
    s.close()


class TestMemoryContract(ClusterContract):
    @pytest.fixture
    def h(self, store: MemoryClusterStore, clock: FakeClock) -> Ctx:
        def pass_time(seconds: float) -> None:
            clock.now += seconds
            store.expire_leases()

        return Ctx(store, pass_time)


def test_leases_expire_on_the_injected_clock_only(store: MemoryClusterStore, clock: FakeClock) -> None:
    lease = store.grant(5)
    store.create("k", b"v", lease=lease)
    clock.now += 4.9
    assert store.get("k") is not None
    clock.now += 0.2
    assert store.get("k") is None  # lazily, on the next call


def test_outage_breaks_watches_and_calls(store: MemoryClusterStore) -> None:
    _, rev = store.range("")
    c = Collector(store.watch("", rev + 1))
    store.set_unavailable(True)
    assert isinstance(c.wait_error(2.0), StoreUnavailable)
    with pytest.raises(StoreUnavailable, match="etcd"):
        store.get("k")
    store.set_unavailable(False)
    assert store.create("k", b"v")


def test_txn_refuses_to_write_a_key_twice(store: MemoryClusterStore) -> None:
    with pytest.raises(ValueError, match="twice"):
        store.txn([], [Put("k", b"1"), Put("k", b"2")])


def test_concurrent_creates_have_one_winner(store: MemoryClusterStore) -> None:
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        for n in range(50):
            if store.create(f"slot/{n}", str(i).encode()):
                wins.append(n)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == list(range(50))
    assert store.range("slot/")[1] == 51  # one revision per successful create
