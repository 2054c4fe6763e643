"""The IPAM driver: address spaces, pools and addresses, persisted in the store."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from driver.errors import Exhausted, InvalidRequest
from driver.ipam import allocator
from driver.ipam.addresses import AddressBook, LocalAddressBook
from driver.ipam.allocator import IPAddr, IPNet
from driver.network.steps import checkpoint
from driver.state import PoolRecord, Purpose, Repo

LOCAL_SPACE = "PyoverlayLocal"
GLOBAL_SPACE = "PyoverlayGlobal"
GATEWAY_TYPE = "com.docker.network.gateway"
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
        checkpoint(f"request pool {rec.id}: save pool")
        self.repo.put_pool(rec)
        checkpoint(f"request pool {rec.id}: answer")
        return rec

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

    def request_address(self, pool_id: str, address: str, options: Mapping[str, Any]) -> str:
        rec = self._pool(pool_id)
        want = allocator.parse_address("Address", address) if address else None
        addr = self.addresses.reserve(rec, want, _purpose(want, options))
        checkpoint(f"request address {pool_id} {addr}: answer")
        return f"{addr}/{ipaddress.ip_network(rec.pool).prefixlen}"

    def release_address(self, pool_id: str, address: str) -> None:
        addr = allocator.parse_address("Address", address)
        rec = self.repo.pool(pool_id)
        if rec is not None:
            self.addresses.release(rec, addr)

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
