"""PeerProgrammer: remote endpoints in etcd → FDB and neighbour entries, on the in-memory
store and a fake netlink (driver/cluster/peers.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from driver.cluster.base import Entry, Put
from driver.cluster.memory import MemoryClusterStore, MemoryWatch
from driver.cluster.peers import Attachment, PeerProgrammer
from driver.cluster.registry import PeerRecord, Registry, peer_key
from driver.errors import DriverError

ME, OTHER, THIRD = "h1", "h2", "h3"
TTL = 10


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeNetlink:
    """The ``PeerNetlink`` interface over per-device tables; a device in ``broken`` fails
    every call the way the adapter does for a missing link (a ``DriverError``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.fdb: dict[str, dict[str, str]] = {}  # dev → MAC → VTEP
        self.neigh: dict[str, dict[str, str]] = {}  # dev → IP → MAC
        self.bridge_deletes: list[tuple[str, str]] = []  # (bridge, MAC)
        self.broken: set[str] = set()
        self.closed = False

    def _check(self, dev: str) -> None:
        if dev in self.broken:
            raise DriverError(f"link {dev} does not exist")

    def fdb_replace(self, dev: str, mac: str, dst: str) -> None:
        with self._lock:
            self._check(dev)
            self.fdb.setdefault(dev, {})[mac] = dst

    def fdb_delete(self, dev: str, mac: str, bridge: str | None = None) -> None:
        with self._lock:
            self._check(dev)
            self.fdb.get(dev, {}).pop(mac, None)
            if bridge is not None:
                self.bridge_deletes.append((bridge, mac))

    def fdb_entries(self, dev: str) -> dict[str, str]:
        with self._lock:
            self._check(dev)
            return dict(self.fdb.get(dev, {}))

    def neigh_replace(self, dev: str, ip: str, mac: str) -> None:
        with self._lock:
            self._check(dev)
            self.neigh.setdefault(dev, {})[ip] = mac

    def neigh_delete(self, dev: str, ip: str) -> None:
        with self._lock:
            self._check(dev)
            self.neigh.get(dev, {}).pop(ip, None)

    def neigh_entries(self, dev: str) -> dict[str, str]:
        with self._lock:
            self._check(dev)
            return dict(self.neigh.get(dev, {}))

    def close(self) -> None:
        self.closed = True

    # -- for the tests ------------------------------------------------------------
    def tables(self, dev: str) -> tuple[dict[str, str], dict[str, str]]:
        with self._lock:
            return dict(self.fdb.get(dev, {})), dict(self.neigh.get(dev, {}))

    def poke(self, dev: str, fdb: dict[str, str | None], neigh: dict[str, str | None]) -> None:
        """Change the kernel behind the programmer's back (None: delete)."""
        with self._lock:
            for table, changes in ((self.fdb, fdb), (self.neigh, neigh)):
                rows = table.setdefault(dev, {})
                for k, v in changes.items():
                    if v is None:
                        rows.pop(k, None)
                    else:
                        rows[k] = v


class Store(MemoryClusterStore):
    """Counts lists; ``before_watch`` runs once just before the next watch is opened
    (between the list and the watch: the watch is then behind)."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock, watch_poll=0.05)
        self.lists = 0
        self.failed_lists = 0
        self.before_watch: Callable[[], None] | None = None

    def range(self, prefix: str) -> tuple[dict[str, Entry], int]:
        try:
            found = super().range(prefix)
        except Exception:
            self.failed_lists += prefix == "peers/"
            raise
        self.lists += prefix == "peers/"
        return found

    def watch(self, prefix: str, start_revision: int) -> MemoryWatch:
        hook, self.before_watch = self.before_watch, None
        if hook is not None:
            hook()
        return super().watch(prefix, start_revision)


def vx(name: str) -> str:
    return f"vx-{name}"


def at(name: str) -> Attachment:
    return Attachment(vxlan=vx(name), bridge=f"br-{name}")


def rec(host: str, n: int, *, v6: bool = False, mac: str | None = None) -> PeerRecord:
    vtep = {ME: "192.0.2.1", OTHER: "192.0.2.2", THIRD: "192.0.2.3"}[host]
    return PeerRecord(host=host, vtep=vtep, mac=mac or f"02:42:0a:3c:00:{n:02x}", ip=f"10.60.0.{n}",
                      ip6=f"fd00:60::{n:x}" if v6 else None)  # fmt: skip


def put(name: str, ep: str, record: PeerRecord) -> Put:
    return Put(peer_key(name, record.host, ep), record.model_dump_json().encode())


def eventually(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.01)


class Cluster:
    """The store and one registry + lease per remote host (they publish as HostSync does)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.leases = {h: store.grant(3600) for h in (ME, OTHER, THIRD)}  # outlive the tests' clock

    def publish(self, name: str, ep: str, record: PeerRecord, lease: int | None = None) -> str:
        Registry(self.store, record.host).publish(name, ep, record, lease or self.leases[record.host])
        return peer_key(name, record.host, ep)

    def withdraw(self, name: str, host: str, ep: str) -> None:
        assert self.store.delete(peer_key(name, host, ep))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Iterator[Store]:
    s = Store(clock)
    yield s
    s.close()


@pytest.fixture
def cluster(store: Store) -> Cluster:
    return Cluster(store)


@pytest.fixture
def nl() -> FakeNetlink:
    return FakeNetlink()


@pytest.fixture
def make(store: Store, nl: FakeNetlink) -> Iterator[Callable[..., PeerProgrammer]]:
    made: list[PeerProgrammer] = []

    def start(resync_every: float = 60.0) -> PeerProgrammer:
        p = PeerProgrammer(store, nl, ME, resync_every=resync_every)
        made.append(p)
        p.start()
        return p

    try:
        yield start
    finally:
        for p in made:
            p.stop()
            assert not any(t.is_alive() for t in p._threads), "the programmer's threads did not stop"


def programmed(nl: FakeNetlink, name: str, *records: PeerRecord) -> Callable[[], bool]:
    """The device's entries are exactly ``records``."""
    fdb = {r.mac: r.vtep for r in records}
    neigh = {ip: r.mac for r in records for ip in (r.ip, r.ip6) if ip}
    return lambda: nl.tables(vx(name)) == (fdb, neigh)


# -- programming ----------------------------------------------------------------------
def test_remote_peers_are_programmed_on_attach_and_as_they_come(
    cluster: Cluster, nl: FakeNetlink, make: Callable[..., PeerProgrammer]
) -> None:
    before = rec(OTHER, 2, v6=True)
    cluster.publish("app", "e2", before)  # listed before the overlay is attached
    p = make()
    assert p.listed.wait(5)
    assert nl.tables(vx("app")) == ({}, {})  # not attached: nothing programmed
    p.attach("app", at("app"))
    eventually(programmed(nl, "app", before))
    assert nl.tables(vx("app"))[1] == {"10.60.0.2": before.mac, "fd00:60::2": before.mac}

    after = rec(THIRD, 3)
    cluster.publish("app", "e3", after)
    eventually(programmed(nl, "app", before, after))
    assert set(p.peers("app")) == {"h2/e2", "h3/e3"}


def test_own_endpoints_are_never_programmed(
    cluster: Cluster, nl: FakeNetlink, make: Callable[..., PeerProgrammer]
) -> None:
    cluster.publish("app", "mine1", rec(ME, 4))
    p = make()
    p.attach("app", at("app"))
    cluster.publish("app", "mine2", rec(ME, 5))
    marker = rec(OTHER, 6)
    cluster.publish("app", "e6", marker)  # after our own: once it is in, ours were seen
    eventually(programmed(nl, "app", marker))
    assert set(p.peers("app")) == {"h2/e6"}


def test_mac_change_replaces_the_fdb_row(
    cluster: Cluster, nl: FakeNetlink, make: Callable[..., PeerProgrammer]
) -> None:
    first = rec(OTHER, 2, v6=True)
    cluster.publish("app", "e2", first)
    p = make()
    p.attach("app", at("app"))
    eventually(programmed(nl, "app", first))
    moved = rec(OTHER, 2, v6=True, mac="02:42:0a:3c:00:99")
    cluster.publish("app", "e2", moved)
    eventually(programmed(nl, "app", moved))
    assert ("br-app", first.mac) in nl.bridge_deletes  # the bridge's learned row too


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "dual-stack"])
def test_delete_removes_the_fdb_row_and_neighbours(
    cluster: Cluster, nl: FakeNetlink, make: Callable[..., PeerProgrammer], v6: bool
) -> None:
    gone, kept = rec(OTHER, 2, v6=v6), rec(THIRD, 3, v6=v6)
    cluster.publish("app", "e2", gone)
    cluster.publish("app", "e3", kept)
    p = make()
    p.attach("app", at("app"))
    eventually(programmed(nl, "app", gone, kept))
    cluster.withdraw("app", OTHER, "e2")
    eventually(programmed(nl, "app", kept))
    assert ("br-app", gone.mac) in nl.bridge_deletes


def test_dead_hosts_endpoints_leave_with_its_lease(
    cluster: Cluster, clock: FakeClock, store: Store, nl: FakeNetlink, make: Callable[..., PeerProgrammer]
) -> None:
    dying = store.grant(TTL)
    a, b, kept = rec(THIRD, 2), rec(THIRD, 3, v6=True), rec(OTHER, 4)
    cluster.publish("app", "e2", a, dying)
    cluster.publish("web", "e3", b, dying)
    cluster.publish("app", "e4", kept)
    p = make()
    p.attach("app", at("app"))
    p.attach("web", at("web"))
    eventually(lambda: programmed(nl, "app", a, kept)() and programmed(nl, "web", b)())
    clock.now += TTL
    store.expire_leases()  # both keys in one revision, one watch batch
    eventually(lambda: programmed(nl, "app", kept)() and programmed(nl, "web")())


def test_detach_stops_programming(cluster: Cluster, nl: FakeNetlink, make: Callable[..., PeerProgrammer]) -> None:
    p = make()
    p.attach("app", at("app"))
    p.attach("web", at("web"))
    first = rec(OTHER, 2)
    cluster.publish("app", "e2", first)
    eventually(programmed(nl, "app", first))
    p.detach("app")
    cluster.publish("app", "e3", rec(OTHER, 3))
    cluster.withdraw("app", OTHER, "e2")
    marker = rec(OTHER, 9)
    cluster.publish("web", "e9", marker)
    eventually(programmed(nl, "web", marker))
    assert programmed(nl, "app", first)()  # left as it was (the device is going)
    # Attached again: diffed against what etcd has now.
    p.attach("app", at("app"))
    eventually(programmed(nl, "app", rec(OTHER, 3)))


def test_resync_repairs_what_was_changed_behind_its_back(
    cluster: Cluster, nl: FakeNetlink, make: Callable[..., PeerProgrammer]
) -> None:
    a, b = rec(OTHER, 2, v6=True), rec(THIRD, 3)
    cluster.publish("app", "e2", a)
    cluster.publish("app", "e3", b)
    p = make(resync_every=0.1)
    p.attach("app", at("app"))
    eventually(programmed(nl, "app", a, b))
    nl.poke(
        vx("app"),
        fdb={"02:42:0a:3c:00:77": "192.0.2.77", a.mac: None, b.mac: "192.0.2.99"},  # added, lost, changed
        neigh={"10.60.0.77": "02:42:0a:3c:00:77", "fd00:60::2": None, "10.60.0.3": "02:42:0a:3c:00:55"},
    )
    eventually(programmed(nl, "app", a, b), what="the periodic resync")


# -- the watch: compaction and outages ------------------------------------------------
def test_compacted_watch_relists_and_misses_nothing(
    cluster: Cluster, store: Store, nl: FakeNetlink, make: Callable[..., PeerProgrammer]
) -> None:
    a, b, c = rec(OTHER, 2), rec(OTHER, 3), rec(THIRD, 4)
    cluster.publish("app", "e2", a)

    def fall_behind() -> None:
        # Between the list and the watch: changes the listing did not see, then etcd
        # compacts past them, so the watch from the listed revision + 1 cannot start.
        cluster.publish("app", "e3", b)
        cluster.publish("app", "e4", c)
        cluster.withdraw("app", OTHER, "e2")
        _, revision = store.range("other/")
        store.compact(revision)

    store.before_watch = fall_behind
    p = make()
    p.attach("app", at("app"))
    eventually(programmed(nl, "app", b, c))
    assert store.lists >= 2  # listed again after the compaction
    # And the new watch works.
    d = rec(THIRD, 5)
    cluster.publish("app", "e5", d)
    eventually(programmed(nl, "app", b, c, d))
    assert set(p.peers("app")) == {"h2/e3", "h3/e4", "h3/e5"}


def test_compaction_under_an_open_watch_loses_nothing(
    cluster: Cluster, store: Store, nl: FakeNetlink, make: Callable[..., PeerProgrammer]
) -> None:
    p = make()
    p.attach("app", at("app"))
    assert p.listed.wait(5)
    records = [rec(OTHER, n) for n in range(2, 12)]
    for n, r in enumerate(records):
        cluster.publish("app", f"e{n}", r)
    _, revision = store.range("other/")
    store.compact(revision)  # the events may still be on their way to the programmer
    eventually(programmed(nl, "app", *records))


def test_outage_relists_and_converges(
    cluster: Cluster, clock: FakeClock, store: Store, nl: FakeNetlink, make: Callable[..., PeerProgrammer]
) -> None:
    dying = store.grant(TTL)
    stays, dies = rec(OTHER, 2, v6=True), rec(THIRD, 3, v6=True)
    cluster.publish("app", "e2", stays)
    cluster.publish("app", "e3", dies, dying)
    p = make()
    p.attach("app", at("app"))
    eventually(programmed(nl, "app", stays, dies))
    lists = store.lists

    store.set_unavailable(True)  # the watch breaks
    eventually(lambda: store.failed_lists > 0, what="a list during the outage")
    clock.now += TTL
    store.expire_leases()  # h3's lease runs out while this host cannot hear of it
    assert programmed(nl, "app", stays, dies)()  # the kernel entries stay meanwhile
    store.set_unavailable(False)
    assert store.get(peer_key("app", THIRD, "e3")) is None

    eventually(programmed(nl, "app", stays), what="convergence after the outage")
    assert store.lists > lists
    later = rec(THIRD, 4)
    cluster.publish("app", "e4", later, store.grant(TTL))
    eventually(programmed(nl, "app", stays, later))


def test_entries_stay_until_the_first_list(
    cluster: Cluster, store: Store, nl: FakeNetlink, make: Callable[..., PeerProgrammer]
) -> None:
    """A driver restarted while etcd is down: the kernel's entries of the last run keep
    carrying traffic until a list says what the cluster has."""
    known, gone = rec(OTHER, 2, v6=True), rec(THIRD, 3)
    for r in (known, gone):
        nl.poke(vx("app"), fdb={r.mac: r.vtep}, neigh={ip: r.mac for ip in (r.ip, r.ip6) if ip})
    cluster.publish("app", "e2", known)
    store.set_unavailable(True)
    p = make(resync_every=0.05)
    p.attach("app", at("app"))
    eventually(lambda: p.last_sync > 0, what="a periodic resync")
    since = p.last_sync
    eventually(lambda: p.last_sync > since, what="another periodic resync")
    assert programmed(nl, "app", known, gone)()
    assert not p.listed.is_set()
    store.set_unavailable(False)
    eventually(programmed(nl, "app", known), what="the diff after the first list")


# -- errors ----------------------------------------------------------------------------
def test_netlink_error_on_one_overlay_does_not_stop_another(
    cluster: Cluster, store: Store, nl: FakeNetlink, make: Callable[..., PeerProgrammer]
) -> None:
    nl.broken.add(vx("api"))  # its device is gone or failing
    x = rec(OTHER, 2)
    cluster.publish("api", "e2", x)
    p = make()
    p.attach("api", at("api"))  # its diff fails
    p.attach("web", at("web"))
    y = rec(OTHER, 3)
    cluster.publish("web", "e3", y)
    eventually(programmed(nl, "web", y))

    # One revision, one batch, the failing overlay's event first.
    a, b = rec(THIRD, 4), rec(THIRD, 5)
    store.txn([], [put("api", "e4", a), put("web", "e5", b)])
    eventually(programmed(nl, "web", y, b))
    a = a.model_copy(update={"mac": "02:42:0a:3c:00:44"})  # the failing overlay's MAC change first
    c = rec(THIRD, 6)
    store.txn([], [put("api", "e4", a), put("web", "e6", c)])
    eventually(programmed(nl, "web", y, b, c))

    # Once the device works again, the next diff (here: attached again) programs it.
    nl.broken.clear()
    p.attach("api", at("api"))
    eventually(programmed(nl, "api", x, a))


def test_dead_host_leaves_an_overlay_even_when_another_fails(
    cluster: Cluster, clock: FakeClock, store: Store, nl: FakeNetlink, make: Callable[..., PeerProgrammer]
) -> None:
    """Its lease deletes its endpoints of every overlay in one batch; the failing overlay's
    event comes first. Not even the periodic resync may bring the dead endpoint back."""
    dying = store.grant(TTL)
    cluster.publish("api", "e2", rec(THIRD, 2), dying)
    cluster.publish("web", "e3", rec(THIRD, 3), dying)
    kept = rec(OTHER, 4)
    cluster.publish("web", "e4", kept)
    p = make(resync_every=0.1)
    p.attach("api", at("api"))
    p.attach("web", at("web"))
    eventually(programmed(nl, "web", rec(THIRD, 3), kept))
    nl.broken.add(vx("api"))
    clock.now += TTL
    store.expire_leases()
    eventually(programmed(nl, "web", kept))
    since = p.last_sync
    eventually(lambda: p.last_sync > since, what="a periodic resync")
    assert programmed(nl, "web", kept)()
    assert set(p.peers("web")) == {"h2/e4"}


def test_stop_closes_netlink(store: Store, nl: FakeNetlink) -> None:
    p = PeerProgrammer(store, nl, ME, resync_every=60.0)
    p.start()
    assert p.listed.wait(5)
    p.stop()
    assert nl.closed and not any(t.is_alive() for t in p._threads)
