"""Persistent records and the typed repository over a ``Store``.

Records are written *before* the kernel is touched, with ``status="creating"``, and
flipped to ``"ready"`` once everything is in place. A record still ``creating`` when the
driver starts belongs to a call that never answered dockerd (the process died half-way),
so reconciliation rolls it back instead of guessing.
"""

from __future__ import annotations

from typing import Literal, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from driver.network.options import NetworkConfig
from driver.store.base import Store

Status = Literal["creating", "ready"]


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SubnetRecord(Record):
    pool: str
    gateway: str | None = None  # CIDR, prefix of the pool (as dockerd sends it)
    aux: dict[str, str] = Field(default_factory=dict)


class NetworkRecord(Record):
    id: str
    status: Status = "creating"
    config: NetworkConfig
    ipv4: list[SubnetRecord] = Field(default_factory=list)
    ipv6: list[SubnetRecord] = Field(default_factory=list)
    # False when the bridge/parent existed before us: we adopt it but never delete it.
    owns_device: bool = True


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
    id: str
    space: str
    pool: str
    subpool: str | None = None
    v6: bool = False
    options: dict[str, str] = Field(default_factory=dict)
    # address → what holds it ("gateway", "aux", "endpoint")
    addresses: dict[str, str] = Field(default_factory=dict)


R = TypeVar("R", bound=Record)


class Repo:
    """Typed access to networks, endpoints and pools in one store."""

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
