"""Persistent records and the typed repository over a ``Store``.

Records are written *before* the kernel is touched, with ``status="creating"``, and
flipped to ``"ready"`` once everything is in place. A record still ``creating`` when the
driver starts belongs to a call that never answered dockerd (the process died half-way),
so reconciliation rolls it back instead of guessing. Deletes mirror it: the record is
flipped to ``"deleting"`` before the kernel is touched and removed last, and
reconciliation finishes a delete it finds ``deleting`` rather than restoring the object
(dockerd's retry of the delete arrives with an empty body and is refused, and dockerd
forgets the object: moby/moby#33412).
"""

from __future__ import annotations

from typing import Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from driver.network.options import NetworkConfig
from driver.store.base import Store

Status = Literal["creating", "ready", "deleting"]


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SubnetRecord(Record):
    pool: str
    space: str = ""  # the IPAM's address space: tells whose IPAM gave the pool
    gateway: str | None = None  # CIDR, prefix of the pool (as dockerd sends it)
    aux: dict[str, str] = Field(default_factory=dict)


class OverlayFacts(Record):
    """An overlay network's cluster facts, kept locally so the data plane can be rebuilt
    (after a reboot, a restart) while etcd is unreachable."""

    vni: int
    mtu: int
    gateway_mac: str
    vtep: str  # this host's tunnel address when the network was created
    port: int


class NetworkRecord(Record):
    id: str
    status: Status = "creating"
    config: NetworkConfig
    ipv4: list[SubnetRecord] = Field(default_factory=list)
    ipv6: list[SubnetRecord] = Field(default_factory=list)
    # False when the bridge/parent existed before us: we adopt it but never delete it.
    owns_device: bool = True
    overlay: OverlayFacts | None = None  # mode=overlay, once joined


class PortBinding(Record):
    proto: int
    port: int
    host_ip: str = ""
    host_port: int = 0
    host_port_end: int = 0


class EndpointRecord(Record):
    id: str
    network_id: str
    status: Status = "creating"
    address: str | None = None  # CIDR
    address_v6: str | None = None
    mac: str | None = None  # None: the kernel's choice (macvlan passthru)
    host_if: str
    ctr_if: str
    ports: list[PortBinding] = Field(default_factory=list)
    programmed: bool = False


class PoolRecord(Record):
    """Pool facts only: its addresses are ``AddressRecord``s, one per address."""

    id: str
    space: str
    pool: str
    subpool: str | None = None
    v6: bool = False
    options: dict[str, str] = Field(default_factory=dict)
    # Set when an overlay network takes the pool: its addresses are then unique across
    # the cluster (claimed in etcd), not only on this host.
    overlay: str | None = None


class LegacyPoolRecord(PoolRecord):
    """A pool as written before per-address records: address → "gateway" or "address".

    Read once at start to migrate (``driver.ipam.addresses.migrate``), never written.
    """

    addresses: dict[str, str] = Field(default_factory=dict)


# What RequestAddress said about the address. dockerd sends the same ``Options: null`` and
# an explicit Address for an aux address and for a container's ``--ip``, so those two are
# one "requested"; "dynamic" is an address we picked; "legacy" a migrated non-gateway one.
Purpose = Literal["gateway", "requested", "dynamic", "legacy"]


class AddressRecord(Record):
    pool: str  # PoolRecord.id
    address: str  # bare IP
    purpose: Purpose


R = TypeVar("R", bound=Record)


class Repo:
    """Typed access to networks, endpoints, pools and pool addresses in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _get(self, kind: str, name: str, cls: type[R]) -> R | None:
        raw = self.store.get(f"{kind}/{quote(name, safe='')}")
        return None if raw is None else cls.model_validate_json(raw)

    def _all(self, kind: str, cls: type[R]) -> list[R]:
        return [cls.model_validate_json(v) for v in self.store.list(kind).values()]

    def _put(self, kind: str, name: str, rec: Record) -> None:
        self.store.put(f"{kind}/{quote(name, safe='')}", rec.model_dump_json().encode())

    def _delete(self, kind: str, name: str) -> None:
        self.store.delete(f"{kind}/{quote(name, safe='')}")

    def network(self, nid: str) -> NetworkRecord | None:
        return self._get("network", nid, NetworkRecord)

    def networks(self) -> list[NetworkRecord]:
        return self._all("network", NetworkRecord)

    def put_network(self, rec: NetworkRecord) -> None:
        self._put("network", rec.id, rec)

    def delete_network(self, nid: str) -> None:
        self._delete("network", nid)

    def endpoint(self, eid: str) -> EndpointRecord | None:
        return self._get("endpoint", eid, EndpointRecord)

    def endpoints(self, network_id: str | None = None) -> list[EndpointRecord]:
        eps = self._all("endpoint", EndpointRecord)
        return [e for e in eps if network_id is None or e.network_id == network_id]

    def put_endpoint(self, rec: EndpointRecord) -> None:
        self._put("endpoint", rec.id, rec)

    def delete_endpoint(self, eid: str) -> None:
        self._delete("endpoint", eid)

    def pool(self, pool_id: str) -> PoolRecord | None:
        return self._get("pool", pool_id, PoolRecord)

    def pools(self) -> list[PoolRecord]:
        return self._all("pool", PoolRecord)

    def put_pool(self, rec: PoolRecord) -> None:
        self._put("pool", rec.id, rec)

    def delete_pool(self, pool_id: str) -> None:
        self._delete("pool", pool_id)

    # Overlay pools released here whose cluster claims are still to be dropped (etcd was
    # unreachable): kept until done, across restarts.
    def released_pools(self) -> list[PoolRecord]:
        return self._all("released", PoolRecord)

    def put_released_pool(self, rec: PoolRecord) -> None:
        self._put("released", rec.id, rec)

    def delete_released_pool(self, pool_id: str) -> None:
        self._delete("released", pool_id)

    def legacy_pools(self) -> list[LegacyPoolRecord]:
        """Pools still carrying the old in-record address map."""
        return [p for p in self._all("pool", LegacyPoolRecord) if p.addresses]

    def addresses(self, pool_id: str) -> list[AddressRecord]:
        prefix = _address_key(pool_id, "")
        recs = self.store.list("address").items()
        return [AddressRecord.model_validate_json(v) for k, v in recs if k.startswith(prefix)]

    def put_address(self, rec: AddressRecord) -> None:
        self.store.put(_address_key(rec.pool, rec.address), rec.model_dump_json().encode())

    def delete_address(self, pool_id: str, address: str) -> None:
        self.store.delete(_address_key(pool_id, address))

    def delete_addresses(self, pool_id: str) -> None:
        prefix = _address_key(pool_id, "")
        for key in [k for k in self.store.list("address") if k.startswith(prefix)]:
            self.store.delete(key)


def _address_key(pool_id: str, address: str) -> str:
    # "|" appears in neither a pool ID nor an IP, so a pool's prefix never matches another
    # pool's keys (10.1.0.0/2 vs 10.1.0.0/24); quoting keeps "/" and ":" out of the name.
    return f"address/{quote(f'{pool_id}|{address}', safe='')}"
