"""Macvlan mode: containers as hosts of their own on the parent's network.

One macvlan device per endpoint, on ``parent`` (``-o parent=eth1``, or ``eth1.10`` for
an 802.1Q sub-interface the driver then creates and later removes). The gateway is the
LAN's router from IPAM; nothing is addressed on the host, and no firewall rule is
involved: frames go straight out of the parent.
"""

from __future__ import annotations

import ipaddress
import logging

from driver.errors import Conflict, DriverError, InvalidRequest, Unsupported
from driver.netlink.adapter import Link, Netlink
from driver.network.steps import Steps
from driver.state import EndpointRecord, NetworkRecord

log = logging.getLogger(__name__)

PARENT = "option parent"


def split_parent(parent: str) -> tuple[str, int | None]:
    """``eth1.10`` → (``eth1``, 10); ``eth1`` → (``eth1``, None)."""
    base, dot, tag = parent.rpartition(".")
    if not dot or not tag.isdigit():
        return parent, None
    vlan = int(tag)
    if not 1 <= vlan <= 4094:
        raise InvalidRequest(f"{PARENT}: VLAN id {vlan} in {parent!r} is out of range 1-4094")
    return base, vlan


class MacvlanMode:
    def __init__(self, nl: Netlink) -> None:
        self.nl = nl

    def _parent(self, net: NetworkRecord) -> str:
        if not net.config.parent:
            raise InvalidRequest(f"{PARENT}: macvlan needs -o parent=<host interface>")
        return net.config.parent

    def _usable(self, name: str, link: Link | None) -> Link:
        if link is None:
            raise InvalidRequest(f"{PARENT}: host interface {name} does not exist")
        if name == "lo" or link.kind == "bridge":
            what = "the loopback device" if name == "lo" else "a bridge"
            raise InvalidRequest(f"{PARENT}: {name} is {what}; macvlan needs a physical, bond or VLAN interface")
        if link.kind in ("macvlan", "veth") and name.startswith("po"):
            raise InvalidRequest(f"{PARENT}: {name} is one of pyoverlay's own container interfaces")
        return link

    def check_coexistence(self, net: NetworkRecord, other: NetworkRecord) -> None:
        """Several networks may share a parent (and VLAN), in different subnets."""
        parent = net.config.parent
        if other.config.parent != parent:
            return
        if "passthru" in (net.config.macvlan_mode, other.config.macvlan_mode):
            raise Conflict(
                f"{PARENT}: {parent} is already used by network {other.id[:12]}, and passthru mode "
                "needs a parent to itself"
            )
        for mine in (*net.ipv4, *net.ipv6):
            for theirs in (*other.ipv4, *other.ipv6):
                a, b = ipaddress.ip_network(mine.pool), ipaddress.ip_network(theirs.pool)
                if a.version == b.version and a.overlaps(b):
                    raise Conflict(
                        f"{PARENT}: network {other.id[:12]} already uses {parent} with subnet {b}, which overlaps {a}"
                    )

    def shares_device(self, net: NetworkRecord, other: NetworkRecord) -> bool:
        return other.config.parent == net.config.parent

    def check_new_endpoint(self, net: NetworkRecord, existing: list[EndpointRecord]) -> None:
        # A passthru network owns its parent (check_coexistence), so one endpoint per
        # network is one per parent.
        if net.config.macvlan_mode == "passthru" and existing:
            raise Conflict(
                f"macvlan_mode=passthru allows a single endpoint on parent {net.config.parent}, "
                f"and endpoint {existing[0].id[:12]} already has it"
            )

    def assigns_mac(self, net: NetworkRecord) -> bool:
        # In passthru mode the device keeps the parent's own MAC unless one is asked for.
        return net.config.macvlan_mode != "passthru"

    def prepare_network(self, net: NetworkRecord) -> None:
        parent = self._parent(net)
        base, vlan = split_parent(parent)
        self._usable(base, self.nl.link(base))
        existing = self.nl.link(parent)
        if vlan is not None and existing is not None:
            self._usable(parent, existing)
        # A sub-interface we create is ours to delete; one that was there before is not.
        net.owns_device = vlan is not None and existing is None
        lower = existing or self.nl.link(base)
        if net.config.mtu and lower and net.config.mtu > lower.mtu:
            raise InvalidRequest(
                f"option com.docker.network.driver.mtu: {net.config.mtu} exceeds the MTU of parent "
                f"{lower.name} ({lower.mtu})"
            )

    def create_network(self, net: NetworkRecord, steps: Steps) -> None:
        parent = self._parent(net)
        if net.owns_device:
            base, vlan = split_parent(parent)
            assert vlan is not None
            steps.run(
                f"create VLAN {parent}", lambda: self._add_vlan(parent, base, vlan), lambda: self.nl.delete(parent)
            )
            steps.run(f"bring up {parent}", lambda: self.nl.set_link(parent, state="up"))
        link = self.nl.link(parent)
        if link is not None and not link.up:
            log.warning("macvlan parent %s is down: containers will have no carrier until it is up", parent)

    def _add_vlan(self, name: str, base: str, vlan: int) -> None:
        try:
            self.nl.add_vlan(name, base, vlan)
        except Unsupported:
            raise Unsupported(
                f"{PARENT}: cannot create {name}: this kernel has no 802.1Q VLAN support (module 8021q)"
            ) from None

    def ensure_network(self, net: NetworkRecord) -> None:
        parent = self._parent(net)
        if net.owns_device and self.nl.link(parent) is None:
            base, vlan = split_parent(parent)
            if vlan is not None and self.nl.link(base) is not None:
                log.info("network %s: VLAN %s is missing, recreating it", net.id[:12], parent)
                self._add_vlan(parent, base, vlan)
                self.nl.set_link(parent, state="up")
        if self.nl.link(parent) is None:
            # Nothing to restore until it is back (its macvlans went with it): reported,
            # and retried, rather than the network passing for whole.
            raise DriverError(f"macvlan parent {parent} does not exist: the network's containers are cut off")

    def delete_network(self, net: NetworkRecord) -> None:
        if net.owns_device and net.config.parent:
            self.nl.delete(net.config.parent)

    def mtu(self, net: NetworkRecord) -> int:
        parent = self.nl.link(self._parent(net))
        parent_mtu = parent.mtu if parent else 1500
        return min(net.config.mtu or parent_mtu, parent_mtu)

    @staticmethod
    def endpoint_names(endpoint_id: str) -> tuple[str, str]:
        """No host end: the macvlan device itself goes into the container."""
        return "", f"pom{endpoint_id[:12]}"

    def create_endpoint(self, net: NetworkRecord, ep: EndpointRecord, steps: Steps) -> None:
        parent = self._parent(net)
        if self.nl.link(parent) is None:
            raise Conflict(f"{PARENT}: host interface {parent} does not exist (any more)")
        steps.run(
            f"create macvlan {ep.ctr_if} on {parent}",
            lambda: self.nl.add_macvlan(ep.ctr_if, parent, net.config.macvlan_mode, self.mtu(net), ep.mac),
            lambda: self.nl.delete(ep.ctr_if),
        )

    def delete_endpoint(self, net: NetworkRecord, ep: EndpointRecord) -> None:
        self.nl.delete(ep.ctr_if)

    def endpoint_alive(self, ep: EndpointRecord) -> bool:
        # The device lives in the container's namespace, out of our sight; the endpoint
        # goes when dockerd deletes it.
        return True

    def device_names(self, net: NetworkRecord) -> set[str]:
        return {net.config.parent} if net.owns_device and net.config.parent else set()
