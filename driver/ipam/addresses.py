"""Per-address bookkeeping of pools: which addresses are held, in the store and in memory.

``IpamService`` works out what is asked (which pool, which address or "any", for what);
an ``AddressBook`` holds it. ``LocalAddressBook`` serves host-local pools with one store
record per address plus an ``AddressIndex`` per pool, so a request costs the same in an
empty pool and in a full /16. A cluster book (overlay pools whose addresses are also
claimed in etcd) can wrap it, claiming cluster-wide before keeping the local mirror here,
or replace it; ``IpamService`` takes either.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Protocol

from driver.errors import Exhausted
from driver.ipam import allocator
from driver.ipam.allocator import IPAddr, IPNet
from driver.ipam.index import AddressIndex
from driver.network.steps import checkpoint
from driver.state import AddressRecord, PoolRecord, Purpose, Repo

log = logging.getLogger(__name__)


class AddressBook(Protocol):
    def reserve(self, pool: PoolRecord, want: IPAddr | None, purpose: Purpose) -> IPAddr:
        """Hold ``want`` (Conflict if held), or else the lowest free address of the pool's range."""

    def release(self, pool: PoolRecord, addr: IPAddr) -> None:
        """Free ``addr``; an address that is not held is not an error (dockerd may repeat)."""

    def forget(self, pool_id: str) -> None:
        """Drop every address of a pool being released, whether known in memory or not."""


class LocalAddressBook:
    def __init__(self, repo: Repo) -> None:
        self.repo = repo
        self._indexes: dict[str, AddressIndex] = {}
        migrate(repo)

    def index(self, pool: PoolRecord) -> AddressIndex:
        """The pool's index, read from the store on first use (one scan per pool and process)."""
        idx = self._indexes.get(pool.id)
        if idx is None:
            idx = self._indexes[pool.id] = _load(self.repo, pool)
        return idx

    def held(self, pool: PoolRecord) -> set[int]:
        """The pool's held addresses, for readers on other threads: a copy, and never a
        cached index built behind the worker's back (it would miss its next write)."""
        idx = self._indexes.get(pool.id)
        if idx is not None:
            return set(idx)
        return {int(ipaddress.ip_address(r.address)) for r in self.repo.addresses(pool.id)}

    def reserve(self, pool: PoolRecord, want: IPAddr | None, purpose: Purpose) -> IPAddr:
        idx, net = self.index(pool), _net(pool)
        if want is not None:
            allocator.check_requested("Address", want, net, idx)
            addr = want
        else:
            addr = _lowest(idx, pool)
        # Store first: if the write fails, the index still says what the store says.
        checkpoint(f"request address {pool.id} {addr}: save address")
        self.repo.put_address(AddressRecord(pool=pool.id, address=str(addr), purpose=purpose))
        idx.take(int(addr))
        return addr

    def release(self, pool: PoolRecord, addr: IPAddr) -> None:
        idx = self.index(pool)
        if int(addr) not in idx:
            return
        checkpoint(f"release address {pool.id} {addr}: forget address")
        self.repo.delete_address(pool.id, str(addr))
        idx.release(int(addr))

    def forget(self, pool_id: str) -> None:
        self.repo.delete_addresses(pool_id)
        self._indexes.pop(pool_id, None)


def _net(pool: PoolRecord) -> IPNet:
    return ipaddress.ip_network(pool.pool)


def _load(repo: Repo, pool: PoolRecord) -> AddressIndex:
    within = ipaddress.ip_network(pool.subpool) if pool.subpool else None
    lo, hi = allocator.dynamic_range(_net(pool), within)
    return AddressIndex(lo, hi, (int(ipaddress.ip_address(r.address)) for r in repo.addresses(pool.id)))


def _lowest(idx: AddressIndex, pool: PoolRecord) -> IPAddr:
    net, found = _net(pool), idx.lowest()
    if found is None:
        rng = f" (range {pool.subpool})" if pool.subpool else ""
        raise Exhausted(f"no free address left in pool {net}{rng}")
    # The family from the pool, not the integer: ip_address(1) would be 0.0.0.1 in ::/64.
    return type(net.network_address)(found)


def migrate(repo: Repo) -> int:
    """Move the address maps of pool records written by earlier versions into address records.

    Addresses first, then the slimmed pool record: a crash in between leaves the old
    record, and the next start writes the same address records again.
    """
    moved = 0
    for old in repo.legacy_pools():
        for ip, holder in old.addresses.items():
            purpose: Purpose = "gateway" if holder == "gateway" else "legacy"
            addr = str(ipaddress.ip_address(ip))  # the canonical spelling keys are made of
            repo.put_address(AddressRecord(pool=old.id, address=addr, purpose=purpose))
        repo.put_pool(PoolRecord.model_validate(old.model_dump(exclude={"addresses"})))
        moved += len(old.addresses)
    if moved:
        log.info("moved %d addresses out of pool records into per-address records", moved)
    return moved
