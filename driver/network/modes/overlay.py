"""Overlay mode: one L2 segment across hosts, a bridge plus a static VXLAN device per host.

Per network and host: the bridge of bridge mode (same gateway address *and MAC* on every
host, so each host is the gateway of its own containers and nothing ARPs across), and a
VXLAN device enslaved to it: the overlay's VNI, an explicit port, this host's VTEP as
local address, learning off (a learned row would mask a missing static one) and ARP/ND
proxy on (ARP for a remote container is answered from the device's own neighbour table,
so no broadcast is ever flooded across hosts). Remote endpoints become a static FDB row
and neighbour entries each, programmed by ``driver.cluster.peers`` from etcd.

Local endpoints are bridge mode's veths; each is published in etcd for the other hosts.
Egress, ``-p``, ``--internal``, ICC and isolation are bridge mode's firewall rules, which
hold across hosts too: a frame from a remote container enters through the bridge.

Only the cluster calls need etcd: creating a network (joining the overlay) and an
endpoint (publishing it). Deletes and restarts work without it; the node's background
sync tells etcd later.
"""

from __future__ import annotations

import logging
from functools import partial

from driver.cluster.node import Node
from driver.cluster.peers import Attachment
from driver.cluster.registry import OverlaySpec, PeerRecord, peer_key
from driver.errors import Conflict, InvalidRequest
from driver.ipam.service import GLOBAL_SPACE, LOCAL_SPACE, IpamService
from driver.netlink.adapter import AddressInUse, Netlink
from driver.network.mac import random_mac
from driver.network.modes.bridge import BridgeMode, bridge_name
from driver.network.steps import Steps
from driver.state import EndpointRecord, NetworkRecord, OverlayFacts

log = logging.getLogger(__name__)

OUR_SPACES = (LOCAL_SPACE, GLOBAL_SPACE)


def vxlan_name(net: NetworkRecord) -> str:
    return f"pov{net.id[:12]}"


def spec_of(net: NetworkRecord) -> OverlaySpec:
    subnets = [*net.ipv4, *net.ipv6]
    assert net.config.overlay is not None
    return OverlaySpec(
        name=net.config.overlay,
        subnets=tuple(s.pool for s in subnets),
        gateways=tuple(s.gateway for s in subnets if s.gateway),
        aux=tuple(sorted(a for s in subnets for a in s.aux.values())),
        vni=net.config.vni,
        mtu=net.config.mtu,
        ipv6=net.config.enable_ipv6,
        internal=net.config.internal,
        icc=net.config.icc,
    )


def held_spec(net: NetworkRecord) -> OverlaySpec:
    """What this host asks when it joins again (etcd lost the overlay): the VNI and MTU
    its data plane already uses, so the segment stays the one its containers are on."""
    spec = spec_of(net)
    if net.overlay is None:
        return spec
    return spec.model_copy(update={"vni": net.overlay.vni, "mtu": net.overlay.mtu})


class OverlayMode(BridgeMode):
    def __init__(self, nl: Netlink, node: Node | None, ipam: IpamService) -> None:
        super().__init__(nl)
        self._node = node
        self.ipam = ipam

    @property
    def node(self) -> Node:
        if self._node is None:
            raise InvalidRequest(
                "option mode: overlay networks need the etcd cluster store: start pyoverlay with "
                "--store etcd --etcd-endpoints http://HOST:2379[,...] on every host"
            )
        return self._node

    # -- facts ----------------------------------------------------------------------
    def mtu(self, net: NetworkRecord) -> int:
        return net.overlay.mtu if net.overlay else super().mtu(net)

    def bridge_mac(self, net: NetworkRecord) -> str:
        return net.overlay.gateway_mac if net.overlay else random_mac()

    def check_coexistence(self, net: NetworkRecord, other: NetworkRecord) -> None:
        if other.config.overlay == net.config.overlay:
            raise Conflict(f"option overlay: overlay {net.config.overlay} is already network {other.id[:12]} here")

    def prepare_network(self, net: NetworkRecord) -> None:
        self.node  # noqa: B018 - refuses at once without the cluster store
        if not net.ipv4 and not net.ipv6:
            raise InvalidRequest("IPv4Data: an overlay network needs a subnet (--subnet)")
        for s in (*net.ipv4, *net.ipv6):
            if s.space not in OUR_SPACES or self.ipam.repo.pool(f"{s.space}/{s.pool}") is None:
                raise InvalidRequest(
                    f"--ipam-driver: overlay network subnet {s.pool} comes from another IPAM; add "
                    "--ipam-driver pyoverlay (Docker's default IPAM allocates per host, so two hosts "
                    "would hand out the same addresses)"
                )
        super().prepare_network(net)

    # -- networks -----------------------------------------------------------------------
    def create_network(self, net: NetworkRecord, steps: Steps) -> None:
        node, name = self.node, self._name(net)
        steps.run(f"join overlay {name}", partial(self._join, net), partial(self._leave, net))
        for s in (*net.ipv4, *net.ipv6):
            steps.run(f"claim pool {s.pool} cluster-wide", partial(self.ipam.adopt, f"{s.space}/{s.pool}", name))
        super().create_network(net, steps)
        steps.run(f"create vxlan {vxlan_name(net)}", partial(self._ensure_vxlan, net),
                  partial(self.nl.delete, vxlan_name(net)))  # fmt: skip
        steps.run(f"attach overlay {name}", partial(self._attach, net), partial(node.programmer.detach, name))

    def _join(self, net: NetworkRecord) -> None:
        node = self.node
        # In the view before etcd, so the background sync never undoes the join; out of it
        # again if the join fails, or the sync would keep the refused overlay alive.
        node.view.add_overlay(spec_of(net))
        try:
            rec = node.registry.join(spec_of(net), node.max_mtu)
        except BaseException:
            self._leave(net)
            raise
        net.overlay = OverlayFacts(vni=rec.vni, mtu=rec.mtu, gateway_mac=rec.gateway_mac, vtep=node.vtep,
                                   port=node.port)  # fmt: skip
        node.view.add_overlay(held_spec(net))
        log.info("network %s is overlay %s: VNI %d, MTU %d", net.id[:12], rec.name, rec.vni, rec.mtu)

    def _leave(self, net: NetworkRecord) -> None:
        # Not waited for: the background sync leaves (and frees) the overlay in etcd.
        self.node.view.remove_overlay(self._name(net))
        self.node.sync.poke()

    def _ensure_vxlan(self, net: NetworkRecord) -> None:
        facts, name = net.overlay, vxlan_name(net)
        assert facts is not None
        try:
            self.nl.add_vxlan(name, facts.vni, self.node.vtep, facts.port, mtu=facts.mtu, mac=random_mac(),
                              dev=self.node.underlay.name)  # fmt: skip
        except Conflict as err:
            # Ours by name but the wrong shape (the VTEP address moved, an older VNI):
            # rebuild rather than carry traffic for the wrong segment.
            log.warning("network %s: %s; recreating it", net.id[:12], err)
            self.nl.delete(name)
            self.nl.add_vxlan(name, facts.vni, self.node.vtep, facts.port, mtu=facts.mtu, mac=random_mac(),
                              dev=self.node.underlay.name)  # fmt: skip
        try:
            self.nl.set_master(name, bridge_name(net))
        except AddressInUse as err:  # the kernel binds the UDP port when the device goes up
            raise Conflict(f"UDP port {facts.port} is taken by another socket on this host (another VXLAN device "
                           f"or program; see --vxlan-port): {err.message}") from None

    def _attach(self, net: NetworkRecord) -> None:
        self.node.programmer.attach(self._name(net), Attachment(vxlan=vxlan_name(net), bridge=bridge_name(net)))

    def ensure_network(self, net: NetworkRecord) -> None:
        super().ensure_network(net)
        if self._node is None:
            log.error("network %s is overlay %s, but pyoverlay runs without --store etcd: its containers "
                      "reach no other host", net.id[:12], net.config.overlay)  # fmt: skip
            return
        self._ensure_vxlan(net)
        self.node.view.add_overlay(held_spec(net))
        self._attach(net)

    def delete_network(self, net: NetworkRecord) -> None:
        if self._node is not None:
            self._node.programmer.detach(self._name(net))
        self.nl.delete(vxlan_name(net))
        super().delete_network(net)
        if self._node is not None:
            self._leave(net)

    @staticmethod
    def _name(net: NetworkRecord) -> str:
        assert net.config.overlay is not None
        return net.config.overlay

    # -- endpoints ------------------------------------------------------------------------
    def create_endpoint(self, net: NetworkRecord, ep: EndpointRecord, steps: Steps) -> None:
        super().create_endpoint(net, ep, steps)
        node, name = self.node, self._name(net)
        rec = self.restore_endpoint(net, ep)
        assert rec is not None
        steps.run(
            f"publish endpoint {ep.id[:12]} in etcd",
            lambda: node.registry.publish(name, ep.id, rec, node.lease.current()),
            lambda: self._withdraw(net, ep),
        )

    def restore_endpoint(self, net: NetworkRecord, ep: EndpointRecord) -> PeerRecord | None:
        """Put the endpoint in the node's view of what this host has (etcd follows)."""
        if self._node is None:
            return None
        node = self._node
        rec = PeerRecord(host=node.host, vtep=node.vtep, mac=ep.mac or "", ip=_bare(ep.address),
                         ip6=_bare(ep.address_v6))  # fmt: skip
        node.view.add_peer(peer_key(self._name(net), node.host, ep.id), rec)
        return rec

    def delete_endpoint(self, net: NetworkRecord, ep: EndpointRecord) -> None:
        super().delete_endpoint(net, ep)
        if self._node is not None:
            self._withdraw(net, ep)

    def _withdraw(self, net: NetworkRecord, ep: EndpointRecord) -> None:
        # Not waited for either: a container's removal must not hang on etcd.
        node = self.node
        node.view.remove_peer(peer_key(self._name(net), node.host, ep.id))
        node.sync.poke()

    def device_names(self, net: NetworkRecord) -> set[str]:
        return {bridge_name(net), vxlan_name(net)}


def _bare(cidr: str | None) -> str | None:
    return cidr.split("/", 1)[0] if cidr else None
