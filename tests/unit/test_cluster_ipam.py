"""Overlay pool addresses claimed cluster-wide: two hosts' ``ClusterAddressBook``s on one
in-memory cluster store, each with its own local book (driver/ipam/cluster.py)."""

from __future__ import annotations

import ipaddress
import random

import pytest

from driver.cluster.base import Indeterminate
from driver.cluster.memory import MemoryClusterStore
from driver.errors import Conflict, Exhausted
from driver.ipam.addresses import LocalAddressBook
from driver.ipam.allocator import IPAddr
from driver.ipam.cluster import Claim, ClusterAddressBook, pool_prefix
from driver.ipam.service import GATEWAY_TYPE, GLOBAL_SPACE, REQUEST_ADDRESS_TYPE, IpamService
from driver.state import PoolRecord, Repo
from driver.store.memory import MemoryStore

OVERLAY = "app"


class Host:
    """One host's IPAM: its own local store, the shared cluster store."""

    def __init__(self, store: MemoryClusterStore, name: str, subnet: str) -> None:
        self.name = name
        self.repo = Repo(MemoryStore())
        self.book = ClusterAddressBook(LocalAddressBook(self.repo), store, name)
        self.changes = 0
        self.book.on_change = self._changed
        self.ipam = IpamService(self.repo, [], [], lambda: [], addresses=self.book)
        # As dockerd does it: the pool and its gateway first (a local pool then), and
        # CreateNetwork makes it the overlay's.
        pool = self.ipam.request_pool(GLOBAL_SPACE, subnet, "", {}, False)
        gateway = str(next(ipaddress.ip_network(subnet).hosts()))
        self.ipam.request_address(pool.id, gateway, {REQUEST_ADDRESS_TYPE: GATEWAY_TYPE})
        self.pool = self.ipam.adopt(pool.id, OVERLAY)

    def _changed(self) -> None:
        self.changes += 1

    def take(self, want: str | None = None) -> IPAddr:
        return self.book.reserve(self.pool, ipaddress.ip_address(want) if want else None, "dynamic")

    def give(self, addr: IPAddr | str) -> None:
        self.book.release(self.pool, ipaddress.ip_address(addr))

    def held(self) -> set[str]:
        """Addresses held in the local book (its store records), the gateway excepted."""
        return {r.address for r in self.repo.addresses(self.pool.id) if r.purpose != "gateway"}

    def indexed(self, addr: str) -> bool:
        return int(ipaddress.ip_address(addr)) in self.book.local.index(self.pool)


def claims(store: MemoryClusterStore, pool: PoolRecord) -> dict[str, str]:
    """ip → claiming host, from the cluster store."""
    entries, _ = store.range(f"{pool_prefix(pool)}/addrs/")
    return {k.rsplit("/", 1)[1]: Claim.model_validate_json(e.value).host for k, e in entries.items()}


def blocks(store: MemoryClusterStore, pool: PoolRecord) -> dict[int, str]:
    entries, _ = store.range(f"{pool_prefix(pool)}/blocks/")
    return {int(k.rsplit("/", 1)[1]): e.value.decode() for k, e in entries.items()}


def mine(store: MemoryClusterStore, host: Host) -> set[str]:
    return {ip for ip, h in claims(store, host.pool).items() if h == host.name}


class FlakyStore(MemoryClusterStore):
    """Address claims time out: ``commit`` says whether each timed-out create still
    committed (``True``), or not yet (``False``; the value is kept for a late commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[bool] = []
        self.lost: list[tuple[str, bytes]] = []

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        if "/addrs/" in key and self.timeouts:
            if self.timeouts.pop(0):
                super().create(key, value, lease)
            else:
                self.lost.append((key, value))
            raise Indeterminate("etcd (test): request timed out")
        return super().create(key, value, lease)


@pytest.fixture
def store() -> MemoryClusterStore:
    return MemoryClusterStore()


def two_hosts(store: MemoryClusterStore, subnet: str = "10.60.0.0/24") -> tuple[Host, Host]:
    return Host(store, "h1", subnet), Host(store, "h2", subnet)


def test_interleaved_allocations_never_collide(store: MemoryClusterStore) -> None:
    a, b = two_hosts(store)
    rng = random.Random(7)
    got: dict[str, list[str]] = {"h1": [], "h2": []}
    for _ in range(200):
        host = rng.choice((a, b))
        got[host.name].append(str(host.take()))
        if rng.random() < 0.2 and got[host.name]:  # some churn: releases, some told to etcd
            host.give(got[host.name].pop(rng.randrange(len(got[host.name]))))
            if rng.random() < 0.5:
                host.book.flush()
    assert not set(got["h1"]) & set(got["h2"])
    for host in (a, b):
        assert host.held() == set(got[host.name])
        host.book.flush()
        assert mine(store, host) == set(got[host.name])  # etcd agrees with each local book
    assert len(claims(store, a.pool)) == len(got["h1"]) + len(got["h2"])


def test_each_host_allocates_from_its_own_block(store: MemoryClusterStore) -> None:
    a, b = two_hosts(store)  # 10.60.0.1-254: 17 blocks of 15
    assert [str(a.take()) for _ in range(3)] == ["10.60.0.2", "10.60.0.3", "10.60.0.4"]  # .1: the gateway
    assert [str(b.take()) for _ in range(3)] == ["10.60.0.16", "10.60.0.17", "10.60.0.18"]
    assert blocks(store, a.pool) == {0: "h1", 1: "h2"}
    assert claims(store, a.pool) == {
        "10.60.0.2": "h1", "10.60.0.3": "h1", "10.60.0.4": "h1",
        "10.60.0.16": "h2", "10.60.0.17": "h2", "10.60.0.18": "h2",
    }  # fmt: skip
    for _ in range(11):  # the rest of block 0 (.5-.15), then a new block
        a.take()
    assert str(a.take()) == "10.60.0.31"
    assert blocks(store, a.pool) == {0: "h1", 1: "h2", 2: "h1"}


def test_explicit_address_held_by_the_other_host_is_refused(store: MemoryClusterStore) -> None:
    a, b = two_hosts(store)
    taken = str(b.take())
    refusal = rf"Address: {taken} is already allocated in pool 10.60.0.0/24 \(held by host h2\)"
    with pytest.raises(Conflict, match=refusal):
        a.take(taken)
    assert not a.indexed(taken) and a.held() == set()  # nothing left behind locally
    assert claims(store, a.pool) == {taken: "h2"}
    assert str(a.take("10.60.0.200")) == "10.60.0.200"  # another explicit address is fine
    with pytest.raises(Conflict, match=r"held by host h1"):
        b.take("10.60.0.200")
    assert not b.indexed("10.60.0.200")


def test_small_pool_is_exhausted_only_when_the_cluster_is_full(store: MemoryClusterStore) -> None:
    # 10.61.0.0/28: .1-.14, .1 the gateway (held locally on each host), blocks of 4.
    a, b = two_hosts(store, "10.61.0.0/28")
    first = [str(a.take()) for _ in range(9)]  # blocks 0, 1 and half of 2
    assert blocks(store, a.pool) == {0: "h1", 1: "h1", 2: "h1"}
    second = [str(b.take()) for _ in range(4)]  # block 3 (.13, .14), then past every block
    assert second == ["10.61.0.13", "10.61.0.14", "10.61.0.11", "10.61.0.12"]
    assert len(set(first) | set(second)) == 13
    for host in (b, a):
        with pytest.raises(Exhausted, match=r"no free address left in pool 10.61.0.0/28 \(across the cluster\)"):
            host.take()
    assert len(a.held()) == 9 and len(b.held()) == 4  # a refusal holds nothing
    assert len(claims(store, a.pool)) == 13
    # Freed on one host (and told to etcd), the address is the other's to take.
    a.give("10.61.0.6")
    a.book.flush()
    assert str(b.take()) == "10.61.0.6"


def test_own_release_is_reusable_after_the_cluster_fallback(store: MemoryClusterStore) -> None:
    """A host that went past all blocks once still reuses its own released addresses,
    before etcd has heard of the release (the claim is then taken over)."""
    a, b = two_hosts(store, "10.61.0.0/28")
    got = [str(a.take()) for _ in range(13)]  # every block is h1's
    with pytest.raises(Exhausted):
        a.take()  # the fallback: read every claim
    a.give(got[4])  # queued for etcd, not told yet
    with pytest.raises(Exhausted):
        b.take()  # etcd still has h1's claim
    assert str(a.take()) == got[4]
    a.book.flush()
    assert claims(store, a.pool)[got[4]] == "h1"
    # And after etcd heard of it.
    a.give(got[5])
    a.book.flush()
    assert str(a.take()) == got[5]


def test_release_is_queued_and_flush_tells_etcd(store: MemoryClusterStore) -> None:
    a, _ = two_hosts(store)
    addr = str(a.take())
    a.give(addr)
    assert not a.indexed(addr) and a.changes == 1  # released here at once, the sync poked
    assert claims(store, a.pool) == {addr: "h1"}  # etcd not told yet
    a.book.flush()
    assert claims(store, a.pool) == {}
    a.book.flush()  # nothing pending: nothing to do
    a.give(addr)  # not held: not an error


def test_own_claim_without_a_local_holder_is_taken_over(store: MemoryClusterStore) -> None:
    a, b = two_hosts(store)
    key = f"{pool_prefix(a.pool)}/addrs/10.60.0.50"
    store.create(key, Claim(host="h1", nonce="last-run").model_dump_json().encode())  # stale, ours
    assert str(a.take("10.60.0.50")) == "10.60.0.50"
    entry = store.get(key)
    assert entry is not None
    assert Claim.model_validate_json(entry.value).host == "h1"
    assert Claim.model_validate_json(entry.value).nonce != "last-run"
    # Released and taken again before etcd heard of the release: the claim stays.
    addr = str(a.take())
    a.give(addr)
    assert str(a.take(addr)) == addr
    a.book.flush()
    assert claims(store, a.pool) == {"10.60.0.50": "h1", addr: "h1"}
    # Another host's claim is never taken over.
    with pytest.raises(Conflict, match="held by host h1"):
        b.take(addr)


def test_timed_out_claim_that_committed_is_a_success_without_leak() -> None:
    store = FlakyStore()
    a, _ = two_hosts(store)
    store.timeouts = [True]
    addr = str(a.take())
    assert claims(store, a.pool) == {addr: "h1"} and a.held() == {addr}
    store.timeouts = [True]
    assert str(a.take("10.60.0.99")) == "10.60.0.99"
    a.book.flush()  # the sweep (a write's outcome was unknown) keeps both: they are held
    assert claims(store, a.pool) == {addr: "h1", "10.60.0.99": "h1"}
    assert a.held() == {addr, "10.60.0.99"}


def test_timed_out_claim_that_did_not_commit_fails_and_is_swept_if_it_lands_late() -> None:
    store = FlakyStore()
    a, b = two_hosts(store)
    store.timeouts = [False, False]
    with pytest.raises(Indeterminate):
        a.take()
    assert store.timeouts == [] and len(store.lost) == 2  # tried exactly twice
    assert a.held() == set() and claims(store, a.pool) == {}
    assert a.book.dirty
    key, value = store.lost[-1]
    MemoryClusterStore.create(store, key, value)  # the write commits after all, late
    assert claims(store, a.pool) == {"10.60.0.2": "h1"}
    a.book.flush()
    assert claims(store, a.pool) == {} and not a.book.dirty
    assert str(b.take("10.60.0.2")) == "10.60.0.2"  # not leaked
    store.timeouts = [False, False]
    with pytest.raises(Indeterminate):
        a.take("10.60.0.3")  # an explicit address, the same
    assert not a.indexed("10.60.0.3")


def test_release_pool_drops_this_hosts_claims_and_blocks_only(store: MemoryClusterStore) -> None:
    a, b = two_hosts(store)
    mine_a = {str(a.take()) for _ in range(20)}  # two blocks
    mine_b = {str(b.take()) for _ in range(5)}
    a.take("10.60.0.250")
    a.give("10.60.0.250")  # a release etcd has not heard of yet
    assert sorted(blocks(store, a.pool).values()) == ["h1", "h1", "h2"]
    for addr in mine_a:
        a.ipam.release_address(a.pool.id, addr)
    a.ipam.release_address(a.pool.id, "10.60.0.1")  # the gateway, as dockerd does
    a.ipam.release_pool(a.pool.id)
    assert claims(store, a.pool) == dict.fromkeys(mine_b, "h2")
    assert blocks(store, a.pool) == {2: "h2"}
    assert a.repo.pool(a.pool.id) is None and a.repo.addresses(a.pool.id) == []
    a.book.flush()  # its queued releases find the pool gone: nothing more to do
    assert claims(store, a.pool) == dict.fromkeys(mine_b, "h2")


def test_release_pool_with_claims_still_held_drops_them_too(store: MemoryClusterStore) -> None:
    """ReleasePool after a crash: addresses never released still go, here and in etcd."""
    a, b = two_hosts(store)
    for _ in range(3):
        a.take()
    kept = str(b.take())
    a.ipam.release_pool(a.pool.id)
    assert claims(store, a.pool) == {kept: "h2"} and blocks(store, a.pool) == {1: "h2"}


@pytest.mark.parametrize("restart", [False, True])
def test_release_pool_while_etcd_is_down_drops_the_claims_once_it_is_back(
    store: MemoryClusterStore, restart: bool
) -> None:
    """The release is a persisted to-do: done by the background sync once etcd answers,
    or by the sweep at the next start (``restart``), never left to the last host out."""
    a, b = two_hosts(store)
    taken = {str(a.take()) for _ in range(3)}
    kept = str(b.take())
    assert mine(store, a) == taken
    store.set_unavailable(True)
    changes = a.changes
    a.ipam.release_pool(a.pool.id)  # dockerd's ReleasePool is answered all the same
    assert a.repo.pool(a.pool.id) is None and a.changes == changes + 1, "the sync is woken"
    store.set_unavailable(False)
    assert mine(store, a) == taken, "nothing could be dropped while etcd was down"
    if restart:
        a.book = ClusterAddressBook(LocalAddressBook(a.repo), store, "h1")
        a.book.sweep()
    else:
        a.book.flush()
    assert claims(store, a.pool) == {kept: "h2"} and set(blocks(store, a.pool).values()) == {"h2"}
    assert a.repo.released_pools() == []


def test_a_released_pool_requested_again_keeps_its_new_claims(store: MemoryClusterStore) -> None:
    a, _ = two_hosts(store)
    a.take()
    store.set_unavailable(True)
    a.ipam.release_pool(a.pool.id)
    store.set_unavailable(False)
    # The same pool asked for again (a new network), before the background sync ran.
    pool = a.ipam.request_pool(GLOBAL_SPACE, "10.60.0.0/24", "", {}, False)
    a.ipam.request_address(pool.id, "10.60.0.1", {REQUEST_ADDRESS_TYPE: GATEWAY_TYPE})
    a.pool = a.ipam.adopt(pool.id, OVERLAY)
    now = str(a.take())
    a.book.flush()
    assert mine(store, a) == {now} and a.repo.released_pools() == []


def test_a_forgotten_hosts_claims_and_blocks_go_back_to_the_pool(store: MemoryClusterStore) -> None:
    a, b = two_hosts(store)
    mine_a = {str(a.take()) for _ in range(3)}
    held_by_b = str(b.take())  # from a block of b's own
    assert set(blocks(store, a.pool).values()) == {"h1", "h2"}
    with pytest.raises(Conflict):
        a.take(held_by_b)  # b holds it (and a now knows, without a round trip next time)
    a.book.forget_host(OVERLAY, "h2")
    assert claims(store, a.pool) == dict.fromkeys(mine_a, "h1")
    assert set(blocks(store, a.pool).values()) == {"h1"}
    assert str(a.take(held_by_b)) == held_by_b, "free for the live hosts again"


def test_after_etcd_lost_its_data_held_addresses_are_claimed_again(store: MemoryClusterStore) -> None:
    h1, h2 = Host(store, "h1", "10.60.0.0/24"), Host(store, "h2", "10.60.0.0/24")
    aux = "10.60.0.250"
    for h in (h1, h2):  # an aux address: every host holds it (asked before CreateNetwork), nobody claims it
        h.book.local.reserve(h.pool, ipaddress.ip_address(aux), "requested")
    h1.book.shared = h2.book.shared = lambda overlay: {aux}
    mine1 = {str(h1.take()) for _ in range(3)}
    mine2 = {str(h2.take()) for _ in range(3)}
    store.delete_prefix("")  # etcd lost everything
    h1.book.sweep()
    h2.book.sweep()
    assert claims(store, h1.pool) == {ip: "h1" for ip in mine1} | {ip: "h2" for ip in mine2}
    # and so nobody hands them out again
    fresh = {str(h2.take()) for _ in range(5)}
    assert not fresh & (mine1 | mine2 | {aux, "10.60.0.1"})


def test_an_address_held_here_but_claimed_elsewhere_is_reported_not_taken(
    store: MemoryClusterStore, caplog: pytest.LogCaptureFixture
) -> None:
    h1, h2 = Host(store, "h1", "10.60.0.0/24"), Host(store, "h2", "10.60.0.0/24")
    ip = str(h1.take())
    store.delete_prefix("")
    h2.take(ip)  # claimed by h2 while etcd had forgotten h1's
    h1.book.sweep()
    assert claims(store, h1.pool)[ip] == "h2"
    assert f"{ip} is in use on this host and claimed by another host too" in caplog.text
