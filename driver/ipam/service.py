"""The IPAM driver: address spaces, pools and addresses, persisted in the store."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Any

from driver.errors import Exhausted, InvalidRequest
from driver.ipam import allocator
from driver.ipam.addresses import AddressBook, LocalAddressBook
from driver.ipam.allocator import IPAddr, IPNet
from driver.network.steps import checkpoint
from driver.state import PoolRecord, Purpose, Repo
from driver.worker import GivenUp, ensure_wanted

LOCAL_SPACE = "PyoverlayLocal"
GLOBAL_SPACE = "PyoverlayGlobal"
GATEWAY_TYPE = "com.docker.network.gateway"
log = logging.getLogger(__name__)
REQUEST_ADDRESS_TYPE = "RequestAddressType"


class IpamService:
    def __init__(
        self,
        repo: Repo,
        default_v4: list[str],
        default_v6: list[str],
        host_routes: Callable[[], list[IPNet]],
        addresses: AddressBook | None = None,
    ) -> None:
        self.repo = repo
        self.default_v4 = default_v4
        self.default_v6 = default_v6
        self.host_routes = host_routes
        self.addresses = addresses if addresses is not None else LocalAddressBook(repo)
        # Pools and addresses this process handed out. One held but *not* in here, asked
        # for again with the same request and used by nothing, is what a crash between
        # its write and the answer left (dockerd never got it, so never released it): the
        # repeat gets it, where a second request for it within this process is refused.
        self._answered_pools: set[str] = set()
        self._answered: set[tuple[str, str]] = set()

    @staticmethod
    def capabilities() -> dict[str, bool]:
        # RequiresRequestReplay is deliberately False. pyoverlay persists every pool and
        # address itself (atomically, see driver.store.local), which also covers the case
        # replay cannot: the driver restarting while dockerd keeps running. With replay on,
        # dockerd would re-request every held pool at each of its starts, and a second
        # request for a held pool is, correctly, an overlap error for a new network.
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    @staticmethod
    def address_spaces() -> dict[str, str]:
        return {"LocalDefaultAddressSpace": LOCAL_SPACE, "GlobalDefaultAddressSpace": GLOBAL_SPACE}

    def request_pool(
        self, space: str, pool: str, subpool: str, options: Mapping[str, str], v6: bool
    ) -> PoolRecord:
        space = space or LOCAL_SPACE
        if space not in (LOCAL_SPACE, GLOBAL_SPACE):
            raise InvalidRequest(
                f"AddressSpace: unknown address space {space!r} (pyoverlay serves {LOCAL_SPACE}, {GLOBAL_SPACE})"
            )
        held = [(p.id, ipaddress.ip_network(p.pool)) for p in self.repo.pools() if p.space == space]
        requested = allocator.parse_network("Pool", pool, v6=v6) if pool else None
        size = allocator.size_only(requested) if requested is not None else None
        if requested is not None and size is None:
            net = requested
            left = self._unanswered_pool(f"{space}/{net}", subpool, options, v6)
            if left is not None:
                return left
            allocator.check_overlap("Pool", net, held)
        else:
            if subpool:
                raise InvalidRequest("SubPool: an --ip-range needs a --subnet")
            net = self._pick(v6, [n for _, n in held], size)
        sub = None
        if subpool:
            sub = allocator.parse_network("SubPool", subpool, v6=v6)
            if not sub.subnet_of(net):  # type: ignore[arg-type]
                raise InvalidRequest(f"SubPool: ip-range {sub} is not inside pool {net}")
        rec = PoolRecord(
            id=f"{space}/{net}",
            space=space,
            pool=str(net),
            subpool=str(sub) if sub else None,
            v6=v6,
            options=dict(options),
        )
        ensure_wanted(f"request pool {rec.id}")  # the pick may have waited on etcd
        checkpoint(f"request pool {rec.id}: save pool")
        self.repo.put_pool(rec)
        self._answered_pools.add(rec.id)
        checkpoint(f"request pool {rec.id}: answer")
        return rec

    def _unanswered_pool(self, pool_id: str, subpool: str, options: Mapping[str, str], v6: bool) -> PoolRecord | None:
        old = self.repo.pool(pool_id)
        if old is None or old.id in self._answered_pools:
            return None
        sub = str(allocator.parse_network("SubPool", subpool, v6=v6)) if subpool else None
        if (old.subpool, old.v6, old.options) != (sub, v6, dict(options)) or self.repo.addresses(old.id):
            return None
        if any(s.pool == old.pool and s.space == old.space for n in self.repo.networks() for s in (*n.ipv4, *n.ipv6)):
            return None
        log.warning("pool %s: the same request again, for a pool a crash left unanswered: answering with it", old.id)
        self._answered_pools.add(old.id)
        return old

    def _pick(self, v6: bool, held: list[IPNet], size: int | None = None) -> IPNet:
        specs = self.default_v6 if v6 else self.default_v4
        candidates = allocator.default_candidates(specs) if size is None else allocator.sized_candidates(specs, size)
        # Host routes count as taken: dockerd would reject an overlapping pick and ask
        # again, and never returning the same overlapping pool twice avoids its loop.
        picked = allocator.pick_pool(candidates, held + self.host_routes())
        if picked is None:
            what = f"/{size} " if size is not None else ""
            raise Exhausted(f"no free {'IPv6' if v6 else 'IPv4'} {what}pool left in the defaults {specs}")
        return picked

    def release_pool(self, pool_id: str) -> None:
        # Addresses first: dockerd releases gateway and aux before ReleasePool, but after a
        # crash some may be left, and they must not come back with a new pool of this ID.
        checkpoint(f"release pool {pool_id}: forget addresses")
        self.addresses.forget(pool_id)
        checkpoint(f"release pool {pool_id}: forget pool")
        self.repo.delete_pool(pool_id)
        self._answered_pools.discard(pool_id)
        self._answered = {a for a in self._answered if a[0] != pool_id}

    def request_address(self, pool_id: str, address: str, options: Mapping[str, Any]) -> str:
        rec = self._pool(pool_id)
        want = allocator.parse_address("Address", address) if address else None
        purpose = _purpose(want, options)
        if want is not None and self._unanswered_address(rec, want, purpose):
            addr = want
        else:
            addr = self.addresses.reserve(rec, want, purpose)
            try:
                ensure_wanted(f"request address {pool_id} {addr}")
            except GivenUp:
                self.addresses.release(rec, addr)
                raise
        self._answered.add((rec.id, str(addr)))
        checkpoint(f"request address {pool_id} {addr}: answer")
        return f"{addr}/{ipaddress.ip_network(rec.pool).prefixlen}"

    def release_address(self, pool_id: str, address: str) -> None:
        addr = allocator.parse_address("Address", address)
        rec = self.repo.pool(pool_id)
        if rec is not None:
            self.addresses.release(rec, addr)
        self._answered.discard((pool_id, str(addr)))

    def _unanswered_address(self, pool: PoolRecord, want: IPAddr, purpose: Purpose) -> bool:
        """Whether ``want`` is a gateway held, not by this process, in a pool no network of
        ours has yet: a crash left its request unanswered. Only gateways: a pool's gateway
        is asked for once, while its network is created, whereas an ``--ip`` address may
        be a running container's on a network of another driver, which has no record here."""
        if purpose != "gateway" or (pool.id, str(want)) in self._answered:
            return False
        if not any(r.address == str(want) and r.purpose == purpose for r in self.repo.addresses(pool.id)):
            return False
        if any(s.pool == pool.pool and s.space == pool.space for n in self.repo.networks() for s in (*n.ipv4, *n.ipv6)):
            return False
        log.warning("gateway %s of pool %s: the same request again, for a gateway a crash left unanswered: "
                    "answering with it", want, pool.id)
        return True

    def adopt(self, pool_id: str, overlay: str) -> PoolRecord:
        """Make a pool an overlay's: from now on its addresses are claimed cluster-wide.

        dockerd asks for the pool (and its gateway) before CreateNetwork says the network
        is an overlay, so a pool only becomes a cluster pool there."""
        rec = self._pool(pool_id)
        if rec.overlay != overlay:
            rec.overlay = overlay
            self.repo.put_pool(rec)
        return rec

    def _pool(self, pool_id: str) -> PoolRecord:
        rec = self.repo.pool(pool_id)
        if rec is None:
            raise InvalidRequest(f"PoolID: unknown pool {pool_id!r}")
        return rec


def _purpose(want: IPAddr | None, options: Mapping[str, Any]) -> Purpose:
    if options.get(REQUEST_ADDRESS_TYPE) == GATEWAY_TYPE:
        return "gateway"
    return "dynamic" if want is None else "requested"
