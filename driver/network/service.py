"""The network driver: CNM lifecycle over records, modes and the firewall.

Every public method runs on the single worker thread (``driver.worker``), so calls are
serialised: no two requests touch one network at the same time, and none races the
reconciliation at start.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from driver.api import models
from driver.errors import Conflict, InvalidRequest
from driver.firewall.rules import PROTOCOLS, BridgeRules, Published, render
from driver.network import ports
from driver.network.mac import check_mac, mac_for
from driver.network.modes import JoinInfo, Mode
from driver.network.modes.bridge import bridge_name
from driver.network.options import NetworkConfig, parse_options
from driver.network.steps import Steps
from driver.state import EndpointRecord, NetworkRecord, PortBinding, Repo, SubnetRecord

log = logging.getLogger(__name__)

GENERIC = "com.docker.network.generic"
ENABLE_IPV6 = "com.docker.network.enable_ipv6"
INTERNAL = "com.docker.network.internal"


class Firewall:
    """What the service needs from the firewall: apply a whole ruleset (v4 and v6)."""

    def __init__(self, v4: Any, v6: Any) -> None:
        self.v4, self.v6 = v4, v6


class NetworkService:
    def __init__(self, repo: Repo, modes: Mapping[str, Mode], firewall: Firewall) -> None:
        self.repo = repo
        self.modes = modes
        self.firewall = firewall

    # -- networks -------------------------------------------------------------
    def create_network(self, req: models.CreateNetworkRequest) -> None:
        opts = req.Options
        generic = opts.get(GENERIC) or {}
        if not isinstance(generic, dict):
            raise InvalidRequest(f"Options.{GENERIC}: must be a map of strings")
        cfg = parse_options(generic, internal=_flag(opts, INTERNAL), enable_ipv6=_flag(opts, ENABLE_IPV6))
        rec = NetworkRecord(
            id=req.NetworkID,
            config=cfg,
            ipv4=[_subnet("IPv4Data", i, d, v6=False) for i, d in enumerate(req.IPv4Data)],
            ipv6=[_subnet("IPv6Data", i, d, v6=True) for i, d in enumerate(req.IPv6Data)],
        )
        old = self.repo.network(req.NetworkID)
        if old is not None:
            self._repeat_create(old, rec)
            return
        self._check_unique_device(rec)
        self.mode(rec).prepare_network(rec)
        self.repo.put_network(rec)
        try:
            with Steps(f"create network {rec.id[:12]}") as steps:
                self.mode(rec).create_network(rec, steps)
                steps.run("program firewall", self.sync_firewall)
        except BaseException:
            self.repo.delete_network(rec.id)
            self._sync_firewall_quietly()
            raise
        rec.status = "ready"
        self.repo.put_network(rec)
        log.info("network %s created (%s %s)", rec.id[:12], cfg.mode, self.device(rec))

    def _repeat_create(self, old: NetworkRecord, new: NetworkRecord) -> None:
        if (old.config, old.ipv4, old.ipv6) != (new.config, new.ipv4, new.ipv6):
            raise Conflict(f"NetworkID: network {old.id[:12]} already exists with different settings")
        # dockerd retried a create that already went through: make sure it is all there.
        self.mode(old).ensure_network(old)
        self.sync_firewall()

    def _check_unique_device(self, rec: NetworkRecord) -> None:
        for other in self.repo.networks():
            if other.config.mode != rec.config.mode:
                continue
            if rec.config.mode == "bridge" and bridge_name(other) == bridge_name(rec):
                raise Conflict(
                    f"option com.docker.network.bridge.name: bridge {bridge_name(rec)} is already used by "
                    f"network {other.id[:12]}"
                )
            if rec.config.mode == "macvlan" and other.config.parent == rec.config.parent:
                _check_shared_parent(rec, other)

    def _check_endpoint_limits(self, net: NetworkRecord, ep: EndpointRecord) -> None:
        if net.config.mode != "macvlan" or net.config.macvlan_mode != "passthru":
            return
        for other in self.repo.endpoints():
            peer = self.repo.network(other.network_id)
            if peer is not None and peer.config.mode == "macvlan" and peer.config.parent == net.config.parent:
                raise Conflict(
                    f"macvlan_mode=passthru allows a single endpoint on parent {net.config.parent}, "
                    f"and endpoint {other.id[:12]} already has it"
                )

    def delete_network(self, nid: str) -> None:
        rec = self.repo.network(nid)
        if rec is None:
            return
        mode = self.mode(rec)
        for ep in self.repo.endpoints(nid):
            mode.delete_endpoint(rec, ep)
            self.repo.delete_endpoint(ep.id)
        mode.delete_network(rec)
        self.repo.delete_network(nid)
        self.sync_firewall()
        log.info("network %s deleted", nid[:12])

    # -- endpoints ------------------------------------------------------------
    def create_endpoint(self, req: models.CreateEndpointRequest) -> dict[str, Any]:
        net = self._network(req.NetworkID)
        iface = req.Interface
        address = _cidr("Interface.Address", iface.Address, net.ipv4)
        address_v6 = _cidr("Interface.AddressIPv6", iface.AddressIPv6, net.ipv6)
        requested = check_mac("Interface.MacAddress", iface.MacAddress) if iface.MacAddress else None
        # In macvlan passthru mode the device keeps the parent's own MAC unless one is asked for.
        passthru = net.config.mode == "macvlan" and net.config.macvlan_mode == "passthru"
        mac = requested or (None if passthru else mac_for(address))
        ports.parse_portmap(req.Options.get(ports.PORTMAP))  # refuse a bad -p before creating anything
        ports.check_exposed(req.Options.get(ports.EXPOSED))
        host_if, ctr_if = self.mode(net).endpoint_names(req.EndpointID)
        ep = EndpointRecord(
            id=req.EndpointID, network_id=net.id, address=address, address_v6=address_v6,
            mac=mac, host_if=host_if, ctr_if=ctr_if,
        )
        old = self.repo.endpoint(req.EndpointID)
        if old is not None:
            if (old.network_id, old.address, old.address_v6) != (ep.network_id, ep.address, ep.address_v6) or (
                requested and requested != old.mac
            ):
                raise Conflict(f"EndpointID: endpoint {old.id[:12]} already exists with different settings")
            ep = old
        else:
            self._check_endpoint_limits(net, ep)
            self._create_endpoint(net, ep)
        # Only fields dockerd left empty may be filled in, or it rolls the endpoint back.
        return {"Interface": {"MacAddress": ep.mac} if ep.mac and not requested else {}}

    def _create_endpoint(self, net: NetworkRecord, ep: EndpointRecord) -> None:
        self.repo.put_endpoint(ep)
        try:
            with Steps(f"create endpoint {ep.id[:12]}") as steps:
                self.mode(net).create_endpoint(net, ep, steps)
        except BaseException:
            self.repo.delete_endpoint(ep.id)
            raise
        ep.status = "ready"
        self.repo.put_endpoint(ep)

    def join(self, req: models.JoinRequest) -> JoinInfo:
        net = self._network(req.NetworkID)
        ep = self._endpoint(req.EndpointID)
        internal = net.config.internal
        return JoinInfo(
            src_name=ep.ctr_if,
            dst_prefix=net.config.iface_prefix,
            gateway=None if internal else _gateway_for(ep.address, net.ipv4),
            gateway_v6=None if internal else _gateway_for(ep.address_v6, net.ipv6),
            disable_gateway_service=internal,
        )

    def leave(self, nid: str, eid: str) -> None:
        # The interface is still in the sandbox here; it is deleted in DeleteEndpoint.
        log.debug("endpoint %s left network %s", eid[:12], nid[:12])

    def program(self, req: models.ProgramRequest) -> None:
        ep = self._endpoint(req.EndpointID)
        net = self._network(ep.network_id)
        wanted = [_with_default_host_ip(b, net.config) for b in ports.parse_portmap(req.Options.get(ports.PORTMAP))]
        if net.config.mode != "bridge" or net.config.internal:
            if wanted:
                log.warning("endpoint %s: ports are not published on %s networks", ep.id[:12], self.kind(net))
            return
        if ep.programmed and ports.same_request(wanted, ep.ports):
            return
        taken = [p for other in self.repo.endpoints() if other.id != ep.id for p in other.ports]
        self._set_ports(ep, ports.resolve(wanted, taken, ports.ephemeral_range()), programmed=True)

    def revoke(self, nid: str, eid: str) -> None:
        ep = self.repo.endpoint(eid)
        if ep is not None and (ep.ports or ep.programmed):
            self._set_ports(ep, [], programmed=False)

    def _set_ports(self, ep: EndpointRecord, bindings: list[PortBinding], programmed: bool) -> None:
        old = (ep.ports, ep.programmed)
        ep.ports, ep.programmed = bindings, programmed
        self.repo.put_endpoint(ep)
        try:
            self.sync_firewall()
        except BaseException:
            ep.ports, ep.programmed = old
            self.repo.put_endpoint(ep)
            self._sync_firewall_quietly()
            raise

    def delete_endpoint(self, nid: str, eid: str) -> None:
        ep = self.repo.endpoint(eid)
        if ep is None:
            return
        net = self.repo.network(ep.network_id)
        if net is not None:
            self.mode(net).delete_endpoint(net, ep)
        self.repo.delete_endpoint(eid)
        if ep.ports:  # Revoke does not always come first (e.g. after a plugin re-enable)
            self.sync_firewall()

    def oper_info(self, nid: str, eid: str) -> dict[str, Any]:
        ep = self.repo.endpoint(eid)
        if ep is None:
            return {}
        return {"host_interface": ep.host_if, "mac_address": ep.mac}

    # -- helpers --------------------------------------------------------------
    def mode(self, net: NetworkRecord) -> Mode:
        return self.modes[net.config.mode]

    @staticmethod
    def kind(net: NetworkRecord) -> str:
        return "internal" if net.config.internal else net.config.mode

    def device(self, net: NetworkRecord) -> str:
        return bridge_name(net) if net.config.mode == "bridge" else net.config.parent or ""

    def _network(self, nid: str) -> NetworkRecord:
        rec = self.repo.network(nid)
        if rec is None:
            raise InvalidRequest(f"NetworkID: network {nid[:12]} is not known to pyoverlay")
        return rec

    def _endpoint(self, eid: str) -> EndpointRecord:
        rec = self.repo.endpoint(eid)
        if rec is None:
            raise InvalidRequest(f"EndpointID: endpoint {eid[:12]} is not known to pyoverlay")
        return rec

    def _sync_firewall_quietly(self) -> None:
        try:
            self.sync_firewall()
        except Exception as err:
            log.error("firewall sync during rollback failed: %s", err)

    def sync_firewall(self) -> None:
        nets = [n for n in self.repo.networks() if n.config.mode == "bridge"]
        endpoints = self.repo.endpoints()
        for fw, v6 in ((self.firewall.v4, False), (self.firewall.v6, True)):
            wanted = [n for n in nets if not v6 or n.config.enable_ipv6]
            fw.apply(render([_bridge_rules(n, [e for e in endpoints if e.network_id == n.id], v6) for n in wanted], v6))


def _bridge_rules(net: NetworkRecord, endpoints: list[EndpointRecord], v6: bool) -> BridgeRules:
    cfg: NetworkConfig = net.config
    subnets = tuple(s.pool for s in (net.ipv6 if v6 else net.ipv4))
    return BridgeRules(
        bridge=bridge_name(net), subnets=subnets, internal=cfg.internal, icc=cfg.icc, masquerade=cfg.masquerade,
        published=tuple(_published(endpoints, v6)),
    )


def _published(endpoints: list[EndpointRecord], v6: bool) -> list[Published]:
    out = []
    for ep in endpoints:
        ctr = ep.address_v6 if v6 else ep.address
        if ctr is None:
            continue
        ctr_ip = str(ipaddress.ip_interface(ctr).ip)
        for b in ep.ports:
            if (6 if v6 else 4) in ports.families(b.host_ip):
                host = None if b.host_ip in ports.WILDCARDS else b.host_ip
                out.append(Published(PROTOCOLS[b.proto], host, b.host_port, ctr_ip, b.port))
    return out


def _with_default_host_ip(b: PortBinding, cfg: NetworkConfig) -> PortBinding:
    # com.docker.network.bridge.host_binding_ipv4, as Docker's bridge: the address used
    # when -p names none (and then IPv4 only).
    if b.host_ip or cfg.host_binding_ipv4 == "0.0.0.0":
        return b
    return b.model_copy(update={"host_ip": cfg.host_binding_ipv4})


def _check_shared_parent(rec: NetworkRecord, other: NetworkRecord) -> None:
    """Several macvlan networks may share a parent (and VLAN), in different subnets."""
    parent = rec.config.parent
    if "passthru" in (rec.config.macvlan_mode, other.config.macvlan_mode):
        raise Conflict(
            f"option parent: {parent} is already used by network {other.id[:12]}, and passthru mode "
            "needs a parent to itself"
        )
    for mine in (*rec.ipv4, *rec.ipv6):
        for theirs in (*other.ipv4, *other.ipv6):
            a, b = ipaddress.ip_network(mine.pool), ipaddress.ip_network(theirs.pool)
            if a.version == b.version and a.overlaps(b):
                raise Conflict(
                    f"option parent: network {other.id[:12]} already uses {parent} with subnet {b}, "
                    f"which overlaps {a}"
                )


def _flag(opts: Mapping[str, Any], key: str) -> bool:
    value = opts.get(key, False)
    if not isinstance(value, bool):
        raise InvalidRequest(f"Options.{key}: must be a boolean")
    return value


def _subnet(field: str, i: int, data: models.IPAMData, v6: bool) -> SubnetRecord:
    from driver.ipam.allocator import parse_address, parse_network

    where = f"{field}[{i}]"
    pool = parse_network(f"{where}.Pool", data.Pool, v6=v6)
    gateway = None
    if data.Gateway:
        gw = parse_address(f"{where}.Gateway", data.Gateway)
        if gw not in pool:
            raise InvalidRequest(f"{where}.Gateway: {gw} is outside pool {pool}")
        gateway = f"{gw}/{pool.prefixlen}"
    aux = {k: str(parse_address(f"{where}.AuxAddresses.{k}", v)) for k, v in data.AuxAddresses.items()}
    return SubnetRecord(pool=str(pool), gateway=gateway, aux=aux)


def _cidr(field: str, value: str, subnets: list[SubnetRecord]) -> str | None:
    if not value:
        return None
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise InvalidRequest(f"{field}: {value!r} is not an address in CIDR form") from None
    if "/" not in value:
        raise InvalidRequest(f"{field}: {value!r} has no prefix length")
    if not any(iface.ip in ipaddress.ip_network(s.pool) for s in subnets):
        raise InvalidRequest(f"{field}: {value} is in none of the network's subnets")
    return str(iface)


def _gateway_for(address: str | None, subnets: list[SubnetRecord]) -> str | None:
    """The gateway of the subnet holding ``address`` (bare IP, as Join wants it)."""
    candidates = [s for s in subnets if s.gateway]
    if address:
        ip = ipaddress.ip_interface(address).ip
        for s in candidates:
            if ip in ipaddress.ip_network(s.pool):
                return str(ipaddress.ip_interface(s.gateway or "").ip)
        return None
    return None
