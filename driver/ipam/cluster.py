"""Addresses of overlay pools: unique across every host, at one etcd round trip each.

An overlay pool is held on every host of the overlay (each host's dockerd asks its own
IPAM for it), and any host may hand out any of its addresses. Each address in use has a
key ``ipam/<overlay>/<pool>/addrs/<ip>`` created with create-if-absent, carrying the
host and a nonce, so two hosts can never hold the same address and a host can tell,
after a write that timed out, whether the claim committed.

To keep hosts from racing for the same lowest address, the dynamic range is cut into
blocks and a host picks from blocks it has claimed (``.../blocks/<n>``, create-if-absent
too): in the common case a container start costs exactly one round trip, with no
contention, however full the pool is. An explicit ``--ip`` anywhere is one create; a
full set of blocks falls back to any address nobody holds.

The local ``AddressBook`` is the truth about what this host holds: an address is held
there *before* it is claimed in etcd and released there after, so the background
reconciliation (``sweep``) never removes a claim a request is making.
"""

from __future__ import annotations

import bisect
import ipaddress
import logging
import secrets
import threading
from collections.abc import Callable

from pydantic import BaseModel

from driver.cluster.base import ClusterStore, Entry, Indeterminate, StoreUnavailable
from driver.errors import Conflict, Exhausted
from driver.ipam import allocator
from driver.ipam.addresses import LocalAddressBook
from driver.ipam.allocator import IPAddr, IPNet
from driver.state import PoolRecord, Purpose

log = logging.getLogger(__name__)

MAX_BLOCK, MIN_BLOCK = 64, 4


class Claim(BaseModel):
    host: str
    nonce: str


def pool_prefix(pool: PoolRecord) -> str:
    assert pool.overlay is not None
    return f"ipam/{pool.overlay}/{pool.pool.replace('/', '_')}"


def block_size(lo: int, hi: int) -> int:
    """About 16 blocks in a small pool, 64 addresses each in a big one."""
    return max(MIN_BLOCK, min(MAX_BLOCK, (hi - lo + 1) // 16))


class ClusterAddressBook:
    """An ``AddressBook`` for pools of every kind: local pools go to ``local``; overlay
    pools are also claimed in the cluster store."""

    def __init__(self, local: LocalAddressBook, store: ClusterStore | None, host: str) -> None:
        self.local = local
        self.store = store
        self.host = host
        self._blocks: dict[str, list[int]] = {}  # pool prefix → my blocks (read once)
        self._foreign_by_pool: dict[str, set[int]] = {}
        self._cursor: dict[str, int] = {}  # pool id → index of the first of my blocks with room
        # Releases not yet told to etcd (done in the background: a container's removal
        # must not wait on etcd), and whether a claim may have committed unseen.
        self._lock = threading.Lock()
        self._pending: set[tuple[str, str]] = set()
        self.dirty = True  # sweep once at start: the last run may have left claims
        self.on_change: Callable[[], None] = lambda: None
        # Overlay → addresses every host holds alike (gateway, aux): never claimed.
        self.shared: Callable[[str], set[str]] = lambda overlay: set()

    def reserve(self, pool: PoolRecord, want: IPAddr | None, purpose: Purpose) -> IPAddr:
        if pool.overlay is None or self.store is None:
            return self.local.reserve(pool, want, purpose)
        if want is not None:
            self._claim_exactly(pool, want, purpose)
            return want
        return self._claim_any(pool, purpose)

    def release(self, pool: PoolRecord, addr: IPAddr) -> None:
        self.local.release(pool, addr)
        self._rewind(pool, addr)
        if pool.overlay is not None and self.store is not None:
            with self._lock:
                self._pending.add((pool.id, str(addr)))
            self.on_change()

    def forget(self, pool_id: str) -> None:
        pool = self.local.repo.pool(pool_id)
        if pool is not None and pool.overlay is not None and self.store is not None:
            # A to-do first: if etcd does not answer (or the driver dies), the claims
            # and blocks are dropped later, not left to the last host leaving the overlay.
            self.local.repo.put_released_pool(pool)
            try:
                self.sweep_pool(pool, held=set())
                self.local.repo.delete_released_pool(pool.id)
            except (StoreUnavailable, Indeterminate) as err:
                log.warning("pool %s: cannot release its cluster addresses now (%s); retried in the background",
                            pool_id, err)  # fmt: skip
                self.dirty = True
                self.on_change()
        self.local.forget(pool_id)

    def forget_host(self, overlay: str, host: str) -> None:
        """Drop the address claims and blocks of ``host``, a member forgotten for being
        gone too long (HostSync), so its addresses serve the live hosts again."""
        assert self.store is not None
        entries, _ = self.store.range(f"ipam/{overlay}/")
        dropped = 0
        for key, entry in entries.items():
            if "/addrs/" in key:
                holder = Claim.model_validate_json(entry.value).host
            elif "/blocks/" in key:
                holder = entry.value.decode()
            else:
                continue
            if holder == host and self.store.delete(key, mod_revision=entry.mod_revision):
                dropped += 1
        for pool in self.local.repo.pools():
            if pool.overlay == overlay:
                self._foreign_by_pool.pop(pool.id, None)  # what it held is free now
        if dropped:
            log.warning("overlay %s: dropped %d address claim(s) and block(s) of departed host %s",
                        overlay, dropped, host)  # fmt: skip

    def _drop_released(self, pool: PoolRecord) -> None:
        """Finish a pool release etcd did not hear of (see ``forget``)."""
        current = self.local.repo.pool(pool.id)
        # Requested again and made the overlay's meanwhile: the claims are the new pool's
        # now, and its own sweep keeps exactly what it holds.
        if current is None or current.overlay is None:
            self.sweep_pool(pool, held=set())
        self.local.repo.delete_released_pool(pool.id)

    # -- claims -------------------------------------------------------------------
    def _claim_exactly(self, pool: PoolRecord, want: IPAddr, purpose: Purpose) -> None:
        self.local.reserve(pool, want, purpose)  # refuses what this host holds, at no round trip
        try:
            won = self._create(pool, want)
        except BaseException:
            self.local.release(pool, want)
            raise
        if not won:
            self.local.release(pool, want)
            raise Conflict(f"Address: {want} is already allocated in pool {pool.pool} ({self._holder(pool, want)})")

    def _claim_any(self, pool: PoolRecord, purpose: Purpose) -> IPAddr:
        for _ in range(64):
            addr = self._candidate(pool)
            self.local.reserve(pool, addr, purpose)
            try:
                won = self._create(pool, addr)
            except BaseException:
                self.local.release(pool, addr)
                raise
            if won:
                return addr
            # Another host took it (an explicit --ip in our block, or the fallback).
            self.local.release(pool, addr)
            self._foreign(pool).add(int(addr))
        raise StoreUnavailable(f"pool {pool.pool}: could not claim a free address in etcd (contention), try again")

    def _create(self, pool: PoolRecord, addr: IPAddr) -> bool:
        assert self.store is not None
        key, claim = f"{pool_prefix(pool)}/addrs/{addr}", Claim(host=self.host, nonce=secrets.token_hex(8))
        for attempt in (1, 2):
            try:
                if self.store.create(key, claim.model_dump_json().encode()):
                    return True
                # Ours already: a release etcd has not heard of, or the first attempt
                # committed after all (then the nonce is the same, and so is the answer).
                return self._take_over(key, claim)
            except Indeterminate:
                # Once again (an etcd leader election makes one write time out): if the
                # first attempt committed, the key now holds our own claim. If neither
                # did but one commits late, the sweep removes the unused claim.
                self.dirty = True
                if attempt == 2:
                    raise
                log.warning("claim of %s timed out in etcd; trying once more", addr)
        return False

    def _take_over(self, key: str, claim: Claim) -> bool:
        """A claim of ours that this host no longer holds (a release etcd has not heard
        of yet, or a stale one) is taken over; another host's is not."""
        assert self.store is not None
        entry = self.store.get(key)
        if entry is None or not self._mine(entry):
            return False
        return self.store.replace(key, claim.model_dump_json().encode(), entry.mod_revision)

    def flush(self) -> None:
        """Tell etcd the releases made here (from the background sync)."""
        with self._lock:
            todo, self._pending = self._pending, set()
        try:
            while todo:
                pool_id, ip = next(iter(todo))
                self._unclaim(pool_id, ip)
                todo.discard((pool_id, ip))
        finally:
            with self._lock:
                self._pending |= todo
        if self.dirty:
            self.sweep()

    def sweep(self) -> None:
        """Make etcd's claims of this host exactly the addresses it holds, in every
        overlay pool (at start, and after a write whose outcome was unknown)."""
        self.dirty = False
        try:
            for released in self.local.repo.released_pools():
                self._drop_released(released)
            for pool in self.local.repo.pools():
                if pool.overlay is not None:
                    self.sweep_pool(pool)
        except BaseException:
            self.dirty = True
            raise

    def _unclaim(self, pool_id: str, ip: str) -> None:
        assert self.store is not None
        pool = self.local.repo.pool(pool_id)
        if pool is None or pool.overlay is None:
            return  # the pool went: its release swept its claims
        if int(ipaddress.ip_address(ip)) in self.local.held(pool):
            return  # held again meanwhile: the claim is in use
        key = f"{pool_prefix(pool)}/addrs/{ip}"
        entry = self.store.get(key)
        if entry is not None and self._mine(entry):
            self.store.delete(key, mod_revision=entry.mod_revision)

    def _holder(self, pool: PoolRecord, addr: IPAddr) -> str:
        assert self.store is not None
        entry = self.store.get(f"{pool_prefix(pool)}/addrs/{addr}")
        return f"held by host {Claim.model_validate_json(entry.value).host}" if entry else "just released"

    def _mine(self, entry: Entry) -> bool:
        return Claim.model_validate_json(entry.value).host == self.host

    # -- picking a candidate --------------------------------------------------------
    def _candidate(self, pool: PoolRecord) -> IPAddr:
        net = ipaddress.ip_network(pool.pool)
        lo, hi = _range(pool, net)
        size = block_size(lo, hi)
        idx, foreign = self.local.index(pool), self._foreign(pool)
        blocks = self._my_blocks(pool, lo, hi, size)
        # Blocks before the cursor are full: a filling pool costs the same per address.
        for i in range(self._cursor.get(pool.id, 0), len(blocks)):
            block = blocks[i]
            for addr in range(lo + block * size, min(hi, lo + (block + 1) * size - 1) + 1):
                if addr not in idx and addr not in foreign:
                    self._cursor[pool.id] = i
                    return type(net.network_address)(addr)
        self._cursor[pool.id] = len(blocks)
        claimed = self._claim_block(pool, lo, hi, size)
        if claimed is not None:
            self._cursor[pool.id] = blocks.index(claimed)
            return self._candidate(pool)
        return self._any_free(pool, net, lo, hi)

    def _rewind(self, pool: PoolRecord, addr: IPAddr) -> None:
        """Room again in the block of ``addr``: start the next search there."""
        if pool.id not in self._cursor or pool.overlay is None:
            return
        lo, hi = _range(pool, ipaddress.ip_network(pool.pool))
        blocks = self._blocks.get(pool_prefix(pool), [])
        at = bisect.bisect_left(blocks, (int(addr) - lo) // block_size(lo, hi))
        self._cursor[pool.id] = min(self._cursor[pool.id], at)

    def _my_blocks(self, pool: PoolRecord, lo: int, hi: int, size: int) -> list[int]:
        prefix = pool_prefix(pool)
        if prefix not in self._blocks:
            assert self.store is not None
            entries, _ = self.store.range(f"{prefix}/blocks/")
            self._blocks[prefix] = sorted(
                int(k.rsplit("/", 1)[1]) for k, e in entries.items() if e.value.decode() == self.host
            )
        return self._blocks[prefix]

    def _claim_block(self, pool: PoolRecord, lo: int, hi: int, size: int) -> int | None:
        assert self.store is not None
        prefix = pool_prefix(pool)
        taken, _ = self.store.range(f"{prefix}/blocks/")
        used = {int(k.rsplit("/", 1)[1]) for k in taken}
        count = (hi - lo) // size + 1
        for block in range(count):
            if block in used:
                continue
            try:
                won = self.store.create(f"{prefix}/blocks/{block}", self.host.encode())
            except Indeterminate:
                entry = self.store.get(f"{prefix}/blocks/{block}")
                won = entry is not None and entry.value.decode() == self.host
            if won:
                bisect.insort(self._blocks.setdefault(prefix, []), block)
                log.info("pool %s: this host claimed address block %d (%d addresses)", pool.pool, block, size)
                return block
        return None

    def _any_free(self, pool: PoolRecord, net: IPNet, lo: int, hi: int) -> IPAddr:
        # Every block is someone's: take any address nobody holds (one range read).
        assert self.store is not None
        entries, _ = self.store.range(f"{pool_prefix(pool)}/addrs/")
        # Other hosts' claims only: one of ours that this host no longer holds (a release
        # etcd has not heard of yet) is taken over, so it is neither skipped nor foreign.
        held = {int(ipaddress.ip_address(k.rsplit("/", 1)[1])) for k, e in entries.items() if not self._mine(e)}
        idx, foreign = self.local.index(pool), self._foreign(pool)
        foreign |= held
        for addr in range(lo, hi + 1):
            if addr not in held and addr not in idx:
                return type(net.network_address)(addr)
        raise Exhausted(f"no free address left in pool {net} (across the cluster)")

    def _foreign(self, pool: PoolRecord) -> set[int]:
        """Addresses seen held by other hosts (skipped without a round trip)."""
        return self._foreign_by_pool.setdefault(pool.id, set())

    # -- reconciliation -----------------------------------------------------------
    def sweep_pool(self, pool: PoolRecord, held: set[str] | None = None) -> None:
        """Make this host's claims in etcd exactly what it holds (``held``: bare IPs,
        default the local book's). Read etcd first, then the local book (module doc)."""
        assert self.store is not None
        prefix = pool_prefix(pool)
        entries, _ = self.store.range(f"{prefix}/addrs/")
        if held is None:
            net = ipaddress.ip_network(pool.pool)
            held = {str(type(net.network_address)(a)) for a in self.local.held(pool)}
        claimed: dict[str, Entry] = {key.rsplit("/", 1)[1]: entry for key, entry in entries.items()}
        for ip, entry in claimed.items():
            if self._mine(entry) and ip not in held:
                log.info("pool %s: dropping the stale cluster claim on %s", pool.pool, ip)
                self.store.delete(f"{prefix}/addrs/{ip}", mod_revision=entry.mod_revision)
        if not held:
            self._release_blocks(pool)
            return
        assert pool.overlay is not None
        gateways = {r.address for r in self.local.repo.addresses(pool.id) if r.purpose == "gateway"}
        ours = held - gateways - self.shared(pool.overlay)
        for ip in ours - claimed.keys():
            # Held here, claimed nowhere: etcd lost its data. Claim it again before
            # another host hands it out.
            if not self._create(pool, ipaddress.ip_address(ip)):
                self._duplicate(pool, ip)
        for ip in ours & claimed.keys():
            if not self._mine(claimed[ip]):
                self._duplicate(pool, ip)

    def _duplicate(self, pool: PoolRecord, ip: str) -> None:
        # Only after etcd lost claims (a restore from an old backup): nothing can be done
        # automatically without breaking one of the two containers.
        log.error("pool %s: %s is in use on this host and claimed by another host too", pool.pool, ip)

    def _release_blocks(self, pool: PoolRecord) -> None:
        assert self.store is not None
        prefix = pool_prefix(pool)
        entries, _ = self.store.range(f"{prefix}/blocks/")
        for key, entry in entries.items():
            if entry.value.decode() == self.host:
                self.store.delete(key, mod_revision=entry.mod_revision)
        self._blocks.pop(prefix, None)


def _range(pool: PoolRecord, net: IPNet) -> tuple[int, int]:
    within = ipaddress.ip_network(pool.subpool) if pool.subpool else None
    return allocator.dynamic_range(net, within)
