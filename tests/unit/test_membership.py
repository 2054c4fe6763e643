"""HostSync: etcd kept in agreement with this host's local view, on the in-memory store
(driver/cluster/membership.py). Two hosts, each with its own ``Registry``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from driver.cluster.base import Condition, Entry, StoreUnavailable, TxnResult, Write
from driver.cluster.membership import HostLease, HostSync, LocalView
from driver.cluster.memory import MemoryClusterStore
from driver.cluster.registry import HostRecord, OverlaySpec, PeerRecord, Registry, peer_key

TTL = 9


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Store(MemoryClusterStore):
    """The in-memory store with hooks to interleave a 'worker' with a sync pass, and a
    switch that makes writes fail while reads and lease renewals work."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock, watch_poll=0.05)
        self.clock = clock
        self.after_range: dict[str, Callable[[], None]] = {}
        self.before_delete: dict[str, Callable[[], None]] = {}
        self.writes_fail = False
        self.deletes_fail = False

    def range(self, prefix: str) -> tuple[dict[str, Entry], int]:
        found = super().range(prefix)
        hook = self.after_range.pop(prefix, None)
        if hook is not None:
            hook()
        return found

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        hook = self.before_delete.pop(key, None)
        if hook is not None:
            hook()
        if self.deletes_fail:
            raise StoreUnavailable("etcd (test): request timed out")
        return super().delete(key, mod_revision)

    def txn(self, conditions: Sequence[Condition], writes: Sequence[Write]) -> TxnResult:
        if self.writes_fail:
            raise StoreUnavailable("etcd (test): no quorum")
        return super().txn(conditions, writes)


class Host:
    def __init__(self, store: Store, name: str, vtep: str, resync_every: float = 60.0, ttl: int = TTL, *,
                 forget_after: float = 0.0) -> None:  # fmt: skip
        self.name = name
        self.store = store
        self.registry = Registry(store, name)
        self.lease = HostLease(store, ttl)
        self.view = LocalView()
        self.left: list[str] = []
        self.sync = HostSync(self.registry, self.lease, self.view, vtep, on_stale_membership=self.left.append,
                             resync_every=resync_every, max_mtu=1450, forget_after=forget_after,
                             clock=store.clock)  # fmt: skip

    def join(self, name: str = "app") -> None:
        self.view.add_overlay(spec(name))
        self.registry.join(spec(name), 1450)

    def endpoint(self, ep: str, ip: str, name: str = "app") -> tuple[str, PeerRecord]:
        """What create_endpoint does: the view first, then (maybe) etcd."""
        key = peer_key(name, self.name, ep)
        rec = PeerRecord(host=self.name, vtep=self.sync.vtep, mac=f"02:42:0a:00:00:{ip.rsplit('.', 1)[1]:0>2}", ip=ip)
        self.view.add_peer(key, rec)
        return key, rec

    def pass_(self) -> None:
        """One pass of the loop, driven by the test."""
        fresh = self.lease.renew()
        self.sync.sync(rewrite=fresh)


def spec(name: str) -> OverlaySpec:
    return OverlaySpec(name=name, subnets=("10.60.0.0/16",), gateways=("10.60.0.1/16",))


def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Iterator[Store]:
    s = Store(clock)
    yield s
    s.close()


@pytest.fixture
def hosts(store: Store) -> Iterator[tuple[Host, Host]]:
    a, b = Host(store, "h1", "192.0.2.1"), Host(store, "h2", "192.0.2.2")
    try:
        yield a, b
    finally:
        a.sync.stop()
        b.sync.stop()


def keys(store: MemoryClusterStore, prefix: str) -> set[str]:
    return set(store.range(prefix)[0])


def members(store: MemoryClusterStore, name: str = "app") -> tuple[str, ...] | None:
    rec = Registry(store, "?").overlay(name)
    return None if rec is None else rec.members


# -- memberships ------------------------------------------------------------------------
def test_membership_without_a_local_network_is_left_and_the_last_host_frees_it(
    store: Store, hosts: tuple[Host, Host]
) -> None:
    a, b = hosts
    a.join()
    b.join()
    ka, _ = a.endpoint("e1", "10.60.0.2")
    kb, _ = b.endpoint("e2", "10.60.0.3")
    a.pass_()
    b.pass_()
    assert keys(store, "peers/app/") == {ka, kb}
    store.create("ipam/app/10.60.0.0_16/addrs/10.60.0.3", b'{"host": "h2", "nonce": "n"}')

    a.view.remove_overlay("app")  # the network went here (etcd not told)
    a.pass_()
    assert members(store) == ("h2",) and a.left == ["app"]
    assert keys(store, "peers/app/") == {kb}  # its endpoints went with it
    b.pass_()
    assert b.left == [] and members(store) == ("h2",)  # b still has it: nothing changes

    b.view.remove_overlay("app")
    b.pass_()
    assert members(store) is None and b.left == ["app"]
    for prefix in ("overlays/", "vnis/", "subnets/", "peers/", "ipam/"):
        assert keys(store, prefix) == set(), prefix
    assert keys(store, "hosts/") == {"hosts/h1", "hosts/h2"}  # the hosts live on


def test_a_member_gone_for_too_long_is_forgotten_and_one_back_in_time_is_not(store: Store, clock: FakeClock) -> None:
    a, b = Host(store, "h1", "192.0.2.1", forget_after=60), Host(store, "h2", "192.0.2.2")
    hosts = (a, b)
    forgotten: list[tuple[str, str]] = []
    a.sync.forget_tasks.append(lambda name, host: forgotten.append((name, host)))
    for h in hosts:
        h.join()
        h.pass_()

    def time_passes(seconds: int) -> None:
        """Full passes every 3 s on ``a``, which renews its lease; ``b`` is silent."""
        for _ in range(seconds // 3):
            clock.now += 3
            store.expire_leases()
            a.pass_()
            a.sync.sync(full=True)

    time_passes(30)  # b's lease (TTL 9) ended at 9 s: gone for 21 s
    assert keys(store, "hosts/") == {"hosts/h1"} and members(store) == ("h1", "h2")
    b.pass_()  # back in time (a reboot): its record is there again, the count starts over
    time_passes(3)
    time_passes(57)  # its new lease ended 9 s after it came back: gone for 51 s
    time_passes(6)
    assert members(store) == ("h1", "h2") and forgotten == [], "57 s gone, counted from after the reboot"
    time_passes(3)
    assert members(store) == ("h1",) and forgotten == [("app", "h2")]
    assert keys(store, "overlays/") == {"overlays/app"}, "never freed by forgetting: a is in it"
    # When b comes back for good, it is no member and joins again (as after etcd lost data).
    b.pass_()
    assert members(store) == ("h1", "h2")


def test_records_of_a_left_overlay_are_withdrawn_even_after_a_failed_pass(
    store: Store, hosts: tuple[Host, Host]
) -> None:
    """The network and its endpoint went here at once (one pass for both); etcd fails in
    the middle of that pass. The next pass must still withdraw the endpoint's record."""
    a, b = hosts
    a.join()
    b.join()
    ka, _ = a.endpoint("e1", "10.60.0.2")
    a.pass_()
    a.view.remove_overlay("app")
    store.deletes_fail = True
    with pytest.raises(StoreUnavailable):
        a.pass_()
    store.deletes_fail = False
    a.pass_()
    assert store.get(ka) is None  # else every peer keeps programming it while h1 lives
    assert members(store) == ("h2",) and a.left == ["app"]


def test_network_kept_locally_but_no_member_in_etcd_joins_again(store: Store, hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    a.view.add_overlay(spec("lost"))  # etcd lost its data, or a join timed out uncommitted
    a.pass_()
    assert members(store, "lost") == ("h1",) and a.left == []
    # with what it asked: a clash with an overlay made meanwhile is reported, not forced
    taken = OverlaySpec(name="taken", subnets=("10.61.0.0/16",), gateways=("10.61.0.1/16",))
    b.view.add_overlay(taken)
    b.registry.join(taken, 1450)
    a.view.add_overlay(taken.model_copy(update={"icc": False}))
    a.pass_()
    assert members(store, "taken") == ("h2",)
    assert a.sync.last_error is not None and "differs from the cluster's" in a.sync.last_error


# -- endpoint records ---------------------------------------------------------------------
def test_stale_record_of_ours_is_withdrawn_and_another_hosts_is_untouched(
    store: Store, hosts: tuple[Host, Host]
) -> None:
    a, b = hosts
    a.join()
    b.join()
    b.endpoint("theirs", "10.60.0.9")
    b.pass_()
    ka, _ = a.endpoint("kept", "10.60.0.2")
    stale, rec = a.endpoint("stale", "10.60.0.3")
    a.pass_()
    theirs = store.get(peer_key("app", "h2", "theirs"))
    assert keys(store, "peers/app/h1/") == {ka, stale}

    a.view.remove_peer(stale)  # the container went; etcd was down then
    a.pass_()
    assert keys(store, "peers/app/h1/") == {ka}
    assert store.get(peer_key("app", "h2", "theirs")) == theirs  # same revision: not rewritten

    # A record of ours in an overlay this host has, written by an earlier run.
    a.registry.publish("app", "old-run", rec, a.lease.current())
    a.pass_()
    assert keys(store, "peers/app/h1/") == {ka}


def test_missing_or_different_records_are_published_on_the_current_lease(
    store: Store, hosts: tuple[Host, Host]
) -> None:
    a, _ = hosts
    a.join()
    k1, r1 = a.endpoint("e1", "10.60.0.2")
    k2, r2 = a.endpoint("e2", "10.60.0.3")
    k3, r3 = a.endpoint("e3", "10.60.0.4")
    a.pass_()  # none in etcd yet (the requests' writes failed, say)
    lease = a.lease.current()
    host = store.get("hosts/h1")
    assert host is not None and host.lease == lease
    assert HostRecord.model_validate_json(host.value).vtep == "192.0.2.1"
    for key, rec in ((k1, r1), (k2, r2), (k3, r3)):
        entry = store.get(key)
        assert entry is not None and entry.lease == lease
        assert PeerRecord.model_validate_json(entry.value) == rec

    other = store.grant(TTL)
    a.registry.publish("app", "e1", r1, other)  # on another lease
    a.registry.publish("app", "e2", r2.model_copy(update={"mac": "02:42:0a:00:00:99"}), lease)  # different
    unchanged = store.get(k3)
    a.pass_()
    e1, e2 = store.get(k1), store.get(k2)
    assert e1 is not None and e1.lease == lease
    assert e2 is not None and PeerRecord.model_validate_json(e2.value) == r2
    assert store.get(k3) == unchanged  # in agreement already: no write


def test_expired_lease_is_replaced_and_every_record_rewritten(
    store: Store, clock: FakeClock, hosts: tuple[Host, Host]
) -> None:
    a, _ = hosts
    a.join()
    k1, _ = a.endpoint("e1", "10.60.0.2")
    a.sync.ready.set()
    a.sync.start()
    eventually(lambda: store.get(k1) is not None)
    first = a.lease.current()

    clock.now += TTL + 1  # etcd did not hear from this host for longer than its TTL
    store.expire_leases()
    assert store.get("hosts/h1") is None and store.get(k1) is None
    a.sync.poke()

    def rewritten() -> bool:
        host, peer = store.get("hosts/h1"), store.get(k1)
        return host is not None and peer is not None and host.lease == peer.lease != first

    eventually(rewritten)
    assert a.lease.current() != first
    assert a.sync.last_error is None


def test_nothing_happens_before_ready(store: Store, hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    a.join()
    b.join()
    stale = peer_key("app", "h1", "from-last-run")
    store.create(stale, PeerRecord(host="h1", vtep="192.0.2.1", mac="02:42:0a:00:00:05").model_dump_json().encode())
    a.view.remove_overlay("app")  # the start-up reconciliation has not rebuilt the view yet
    a.sync.start()
    a.sync.poke()
    assert not a.sync.synced.wait(0.7)  # longer than the loop's look at `ready`
    assert store.get("hosts/h1") is None and store.get(stale) is not None
    assert members(store) == ("h1", "h2")

    a.view.add_overlay(spec("app"))
    a.sync.ready.set()
    assert a.sync.synced.wait(5)
    assert store.get("hosts/h1") is not None
    assert store.get(stale) is None and members(store) == ("h1", "h2")


def test_failed_pass_records_the_error_and_the_next_pass_recovers(store: Store, hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    a.join()
    k1, _ = a.endpoint("e1", "10.60.0.2")
    a.sync.ready.set()
    a.sync.start()
    eventually(lambda: store.get(k1) is not None)

    store.set_unavailable(True)
    a.sync.poke()
    eventually(lambda: a.sync.last_error is not None)
    assert "unavailable" in (a.sync.last_error or "")
    a.view.remove_peer(k1)  # while etcd is down
    k2, _ = a.endpoint("e2", "10.60.0.3")
    store.set_unavailable(False)
    a.sync.poke()
    eventually(lambda: store.get(k2) is not None and store.get(k1) is None)
    eventually(lambda: a.sync.last_error is None)


def test_failed_sync_is_retried_without_a_poke(store: Store, clock: FakeClock) -> None:
    """The lease renews but the pass's writes fail: the next renewal passes again (the
    periodic resync is a minute away), and the error stays until a pass succeeds."""
    a = Host(store, "h1", "192.0.2.1", resync_every=60.0, ttl=3)  # renewals every second
    try:
        a.join()
        k1, _ = a.endpoint("e1", "10.60.0.2")
        a.sync.ready.set()
        a.sync.start()
        eventually(lambda: store.get(k1) is not None)

        clock.now += 4
        store.expire_leases()  # keys gone; the next renewal takes a new lease
        store.writes_fail = True
        a.sync.poke()
        eventually(lambda: a.sync.last_error is not None)
        store.writes_fail = False  # no poke: nothing local changed
        eventually(lambda: store.get(k1) is not None and store.get("hosts/h1") is not None, timeout=5)
        eventually(lambda: a.sync.last_error is None)
    finally:
        a.sync.stop()


def test_tasks_run_on_every_pass_and_their_errors_are_reported(store: Store, hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    ran: list[int] = []
    a.sync.tasks.append(lambda: ran.append(1))
    a.pass_()
    a.pass_()
    assert len(ran) == 2

    def broken() -> None:
        raise StoreUnavailable("etcd (test): flush failed")

    a.sync.tasks.append(broken)
    a.sync.ready.set()
    a.sync.start()
    eventually(lambda: a.sync.last_error == "etcd (test): flush failed")


# -- the race with the worker (module doc of membership.py) ------------------------------
def test_endpoint_added_after_the_etcd_read_is_not_withdrawn(store: Store, hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    a.join()
    a.pass_()
    added: list[str] = []

    def worker() -> None:  # create_endpoint, between the pass's etcd read and its view read
        key, rec = a.endpoint("new", "10.60.0.7")
        a.registry.publish("app", "new", rec, a.lease.current())
        added.append(key)

    store.after_range["peers/app/h1/"] = worker
    a.pass_()
    assert added and store.get(added[0]) is not None


def test_endpoint_restored_before_the_stale_delete_is_not_withdrawn(store: Store, hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    a.join()
    key, rec = a.endpoint("e1", "10.60.0.2")
    a.pass_()
    a.view.remove_peer(key)

    def worker() -> None:  # the endpoint is back (view, then etcd) after the pass read both
        a.view.add_peer(key, rec)
        a.registry.publish("app", "e1", rec, a.lease.current())

    store.before_delete[key] = worker
    a.pass_()
    assert not store.before_delete  # the pass did try to withdraw it
    assert store.get(key) is not None  # but only at the revision it read
    a.pass_()
    assert store.get(key) is not None


def test_a_restarted_driver_keeps_its_lease_while_it_lives(tmp_path: Path) -> None:
    now = [0.0]
    store = MemoryClusterStore(clock=lambda: now[0])
    first = HostLease(store, TTL, saved=tmp_path / "host-lease")
    assert first.renew() is True
    lease = first.current()
    again = HostLease(store, TTL, saved=tmp_path / "host-lease")  # the driver, restarted
    assert again.renew() is False and again.current() == lease, "its records on that lease are still there"
    now[0] += TTL + 1
    store.expire_leases()
    late = HostLease(store, TTL, saved=tmp_path / "host-lease")  # restarted after the lease lapsed
    assert late.renew() is True and late.current() != lease
