"""Typed cluster facts over a ``ClusterStore``: overlay identities, VNIs, members, peers.

Key layout (relative to the store's prefix)::

    overlays/<name>                  OverlayRecord: VNI, MTU, subnets, members (no lease)
    vnis/<vni>                       the overlay holding the VNI (no lease)
    subnets/<cidr>                   the overlay holding the subnet (no lease)
    hosts/<host>                     HostRecord, on the host's lease
    peers/<name>/<host>/<endpoint>   PeerRecord, on the host's lease
    ipam/<name>/...                  overlay addresses (driver.ipam.cluster)

Identities, VNIs and subnets carry no lease: a partition or an etcd outage must never
free what running containers use. Only liveness facts (hosts, their endpoints) do.

Every write is conditional and every claim self-verifying: a host id in the value (the
members list) tells, after a write that timed out, whether it committed.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from driver.cluster.base import (
    Absent,
    ClusterStore,
    Condition,
    Delete,
    DeletePrefix,
    Entry,
    Indeterminate,
    Put,
    StoreUnavailable,
    Unchanged,
    Write,
)
from driver.errors import Conflict, Exhausted

log = logging.getLogger(__name__)

# Docker's swarm allocates overlay VNIs from 4096 up (libnetwork ovmanager), so ours stay
# below: a swarm overlay and a pyoverlay overlay can then share a host and a UDP port.
AUTO_VNI_RANGE = (1, 4095)
_RETRIES = 8


class Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class OverlaySpec(Record):
    """What one host's CreateNetwork asks of the overlay; every host must ask the same."""

    name: str
    subnets: tuple[str, ...]
    gateways: tuple[str, ...]
    aux: tuple[str, ...] = ()
    vni: int | None = None
    mtu: int | None = None
    ipv6: bool = False
    internal: bool = False
    icc: bool = True


class OverlayRecord(Record):
    name: str
    vni: int
    mtu: int
    gateway_mac: str
    subnets: tuple[str, ...]
    gateways: tuple[str, ...]
    aux: tuple[str, ...] = ()
    ipv6: bool = False
    internal: bool = False
    icc: bool = True
    members: tuple[str, ...] = ()


class PeerRecord(Record):
    host: str
    vtep: str
    mac: str
    ip: str | None = None  # bare addresses
    ip6: str | None = None


class HostRecord(Record):
    vtep: str
    hostname: str = ""


R = TypeVar("R", bound=Record)


def _load(cls: type[R], entry: Entry | None) -> R | None:
    return None if entry is None else cls.model_validate_json(entry.value)


def _dump(rec: Record) -> bytes:
    return rec.model_dump_json().encode()


def overlay_key(name: str) -> str:
    return f"overlays/{name}"


def subnet_key(cidr: str) -> str:
    return f"subnets/{cidr.replace('/', '_')}"


def peer_key(name: str, host: str, endpoint: str) -> str:
    return f"peers/{name}/{host}/{endpoint}"


def parse_peer_key(key: str) -> tuple[str, str, str] | None:
    parts = key.split("/")
    return (parts[1], parts[2], parts[3]) if len(parts) == 4 and parts[0] == "peers" else None


def gateway_mac(vni: int) -> str:
    """One gateway MAC per overlay, the same on every host: a host's containers then
    never need to learn a new one for the gateway, and nothing ARPs across hosts."""
    return "02:50:4f:" + ":".join(f"{(vni >> s) & 0xFF:02x}" for s in (16, 8, 0))


# Fields every host must agree on, with the option a user would change to fix them.
_MATCHED = (
    ("subnets", "--subnet"),
    ("gateways", "--gateway"),
    ("aux", "--aux-address"),
    ("ipv6", "--ipv6"),
    ("internal", "--internal"),
    ("icc", "-o com.docker.network.bridge.enable_icc"),
)


class Registry:
    """This host's view of the cluster's overlays; every call is one or a few bounded round trips."""

    def __init__(self, store: ClusterStore, host: str) -> None:
        self.store = store
        self.host = host

    # -- overlay identities ---------------------------------------------------
    def overlay(self, name: str) -> OverlayRecord | None:
        return _load(OverlayRecord, self.store.get(overlay_key(name)))

    def join(self, spec: OverlaySpec, max_mtu: int) -> OverlayRecord:
        """Make this host a member of overlay ``spec.name``, creating it if it is new.

        ``max_mtu`` is what this host's underlay can carry. Refuses (``Conflict``) a spec
        that differs from the cluster's, naming the field and the cluster's value.
        """
        timeouts = 0
        for _ in range(_RETRIES):
            entry = self.store.get(overlay_key(spec.name))
            if entry is None:
                try:
                    created = self._create(spec, max_mtu)
                except Indeterminate:
                    timeouts += 1  # not committed (yet): once more, as for the CAS below
                    if timeouts > 1:
                        raise
                    continue
                if created is not None:
                    return created
                continue
            rec = OverlayRecord.model_validate_json(entry.value)
            _check_matches(rec, spec, max_mtu)
            if self.host in rec.members:
                return rec
            joined = rec.model_copy(update={"members": (*rec.members, self.host)})
            if self._cas(joined, entry):
                return joined
        raise StoreUnavailable(f"overlay {spec.name}: too much contention in etcd, try again")

    def _create(self, spec: OverlaySpec, max_mtu: int) -> OverlayRecord | None:
        mtu = spec.mtu or max_mtu
        if spec.mtu and spec.mtu > max_mtu:
            raise Conflict(_mtu_refusal(spec.name, spec.mtu, max_mtu))
        self._check_subnets_free(spec)
        vni = spec.vni if spec.vni is not None else self._free_vni()
        rec = OverlayRecord(
            name=spec.name, vni=vni, mtu=mtu, gateway_mac=gateway_mac(vni), subnets=spec.subnets,
            gateways=spec.gateways, aux=spec.aux, ipv6=spec.ipv6, internal=spec.internal, icc=spec.icc,
            members=(self.host,),
        )
        claims = [overlay_key(spec.name), f"vnis/{vni}", *(subnet_key(s) for s in spec.subnets)]
        writes: list[Write] = [
            # Leftovers of an earlier overlay of the same name (a cleanup cut short).
            DeletePrefix(f"ipam/{spec.name}/"),
            Put(overlay_key(spec.name), _dump(rec)),
            Put(f"vnis/{vni}", spec.name.encode()),
            *(Put(subnet_key(s), spec.name.encode()) for s in spec.subnets),
        ]
        try:
            result = self.store.txn([Absent(k) for k in claims], writes)
        except Indeterminate:
            log.warning("overlay %s: creating it timed out in etcd; checking whether it committed", spec.name)
            if self._committed(spec.name):
                return self.overlay(spec.name)
            raise
        if result.succeeded:
            log.info("overlay %s created in the cluster: VNI %d, MTU %d", spec.name, vni, mtu)
            return rec
        self._explain_failed_claims(spec, vni, result.failed)
        return None  # someone created the overlay meanwhile, or took the VNI: look again

    def _explain_failed_claims(self, spec: OverlaySpec, vni: int, failed: Sequence[Condition]) -> None:
        keys = {c.key for c in failed}
        if overlay_key(spec.name) in keys:
            return
        for s in spec.subnets:
            if subnet_key(s) in keys:
                holder = self.store.get(subnet_key(s))
                raise Conflict(_subnet_refusal(s, holder.value.decode() if holder else "another overlay"))
        if f"vnis/{vni}" in keys and spec.vni is not None:
            holder = self.store.get(f"vnis/{vni}")
            raise Conflict(f"option vni: VXLAN id {vni} is already used by overlay {_text(holder)}")

    def _check_subnets_free(self, spec: OverlaySpec) -> None:
        held, _ = self.store.range("subnets/")
        for key, entry in held.items():
            other = ipaddress.ip_network(key.removeprefix("subnets/").replace("_", "/"))
            for s in spec.subnets:
                mine = ipaddress.ip_network(s)
                if mine.version == other.version and mine.overlaps(other):
                    raise Conflict(_subnet_refusal(s, entry.value.decode(), other=str(other)))

    def _free_vni(self) -> int:
        taken, _ = self.store.range("vnis/")
        used = {int(k.removeprefix("vnis/")) for k in taken}
        lo, hi = AUTO_VNI_RANGE
        for vni in range(lo, hi + 1):
            if vni not in used:
                return vni
        raise Exhausted(f"no free VXLAN id left in {lo}-{hi}; pin one above with -o vni=N")

    def leave(self, name: str) -> None:
        """Drop this host from the overlay; the last host out frees it whole (VNI, subnets,
        addresses, peers) in one transaction."""
        for _ in range(_RETRIES):
            entry = self.store.get(overlay_key(name))
            rec = _load(OverlayRecord, entry)
            if entry is None or rec is None or self.host not in rec.members:
                return
            rest = tuple(m for m in rec.members if m != self.host)
            if self._cas(rec.model_copy(update={"members": rest}), entry, free=not rest):
                return
        raise StoreUnavailable(f"overlay {name}: too much contention in etcd, try again")

    def _free(self, rec: OverlayRecord, entry: Entry) -> bool:
        writes: list[Write] = [
            Delete(overlay_key(rec.name)),
            Delete(f"vnis/{rec.vni}"),
            *(Delete(subnet_key(s)) for s in rec.subnets),
            DeletePrefix(f"ipam/{rec.name}/"),
            DeletePrefix(f"peers/{rec.name}/"),
        ]
        done = self.store.txn([Unchanged(overlay_key(rec.name), entry.mod_revision)], writes).succeeded
        if done:
            log.info("overlay %s: last host left; VNI %d and its subnets are free", rec.name, rec.vni)
        return done

    def _cas(self, rec: OverlayRecord, seen: Entry, free: bool = False) -> bool:
        """Write ``rec`` (or free the overlay) if unchanged since ``seen``. A write that
        timed out counts as not done: the caller's loop re-reads and sees the truth."""
        try:
            if free:
                return self._free(rec, seen)
            return self.store.replace(overlay_key(rec.name), _dump(rec), seen.mod_revision)
        except Indeterminate:
            log.warning("overlay %s: an etcd write timed out; checking whether it committed", rec.name)
            return False

    def _committed(self, name: str) -> bool:
        rec = self.overlay(name)
        return rec is not None and self.host in rec.members

    def departed(self) -> set[tuple[str, str]]:
        """(overlay, host) for the other members, in the overlays this host is in, whose
        host record (leased) is gone: dead, or cut off for longer than their lease."""
        records, _ = self.store.range("overlays/")
        hosts, _ = self.store.range("hosts/")
        alive = {k.removeprefix("hosts/") for k in hosts}
        found: set[tuple[str, str]] = set()
        for entry in records.values():
            rec = OverlayRecord.model_validate_json(entry.value)
            if self.host in rec.members:
                found |= {(rec.name, m) for m in rec.members if m not in alive and m != self.host}
        return found

    def forget_member(self, name: str, host: str) -> None:
        """Drop ``host`` from the members of ``name`` (never the last one: this host is
        one). Its leased records went with its lease; its address claims go first (the
        caller's). If it comes back, it joins again like a host whose etcd lost its data."""
        for _ in range(_RETRIES):
            entry = self.store.get(overlay_key(name))
            rec = _load(OverlayRecord, entry)
            if entry is None or rec is None or host not in rec.members or host == self.host:
                return
            rest = tuple(m for m in rec.members if m != host)
            if self._cas(rec.model_copy(update={"members": rest}), entry):
                log.warning("overlay %s: forgot member %s (no host record for too long)", name, host)
                return
        raise StoreUnavailable(f"overlay {name}: too much contention in etcd, try again")

    def memberships(self) -> dict[str, Entry]:
        """Overlays this host is a member of (for the background reconciliation)."""
        records, _ = self.store.range("overlays/")
        return {
            k.removeprefix("overlays/"): e
            for k, e in records.items()
            if self.host in OverlayRecord.model_validate_json(e.value).members
        }

    # -- hosts and peers ----------------------------------------------------------
    def put_host(self, rec: HostRecord, lease: int) -> None:
        self.store.txn([], [Put(f"hosts/{self.host}", _dump(rec), lease)])

    def publish(self, name: str, endpoint: str, rec: PeerRecord, lease: int) -> None:
        write = Put(peer_key(name, self.host, endpoint), _dump(rec), lease)
        try:
            self.store.txn([], [write])
        except Indeterminate:
            # A plain put: doing it twice is doing it once. One leader election costs one
            # timed-out write; a second failure is an outage and is reported.
            log.warning("publishing endpoint %s timed out in etcd; trying once more", endpoint[:12])
            self.store.txn([], [write])


def _check_matches(rec: OverlayRecord, spec: OverlaySpec, max_mtu: int) -> None:
    for field, option in _MATCHED:
        mine, theirs = getattr(spec, field), getattr(rec, field)
        if mine != theirs:
            raise Conflict(
                f"overlay {rec.name}: {option} {_show(mine)} differs from the cluster's {_show(theirs)} "
                "(every host must create the overlay with the same settings)"
            )
    if spec.vni is not None and spec.vni != rec.vni:
        raise Conflict(f"overlay {rec.name}: option vni {spec.vni} differs from the cluster's VNI {rec.vni}")
    if spec.mtu is not None and spec.mtu != rec.mtu:
        raise Conflict(f"overlay {rec.name}: MTU {spec.mtu} differs from the cluster's MTU {rec.mtu}")
    if rec.mtu > max_mtu:
        raise Conflict(_mtu_refusal(rec.name, rec.mtu, max_mtu, cluster=True))


def _mtu_refusal(name: str, mtu: int, max_mtu: int, cluster: bool = False) -> str:
    what = "the cluster's MTU" if cluster else "MTU"
    return (
        f"overlay {name}: {what} {mtu} does not fit this host's underlay, which carries at most {max_mtu} "
        "inside VXLAN (underlay MTU minus 50 for IPv4, 70 for IPv6)"
    )


def _subnet_refusal(subnet: str, holder: str, other: str | None = None) -> str:
    if other and other != subnet:
        return f"--subnet {subnet}: overlaps {other}, which overlay {holder} already uses"
    return f"--subnet {subnet}: already used by overlay {holder}"


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return ",".join(value) or "(none)"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _text(entry: Entry | None) -> str:
    return entry.value.decode() if entry else "?"
