"""Bridge mode: a Linux bridge per network holding the gateway, a veth pair per endpoint.

The container end of the veth is left, down and unaddressed, in the driver's namespace
(dockerd's) under ``SrcName``: libnetwork moves it into the sandbox, renames it and
assigns the addresses itself, and hands it back under the same name on Leave.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from driver.errors import Conflict, DriverError, Unsupported
from driver.firewall import bridgenf
from driver.netlink.adapter import Netlink, write_sysctl
from driver.network.mac import random_mac
from driver.network.steps import Steps
from driver.state import EndpointRecord, NetworkRecord

log = logging.getLogger(__name__)

DEFAULT_MTU = 1500
# Modes whose networks are a bridge of ours, with bridge mode's firewall rules.
BRIDGED_MODES = ("bridge", "overlay")


def bridge_name(net: NetworkRecord) -> str:
    return net.config.bridge_name or f"po-{net.id[:12]}"


def gateways(net: NetworkRecord) -> list[str]:
    return [s.gateway for s in (*net.ipv4, *net.ipv6) if s.gateway]


def _forwarding(v6: bool) -> None:
    """What Docker's bridge driver also does: routing between bridge and uplink.

    dockerd turns IPv4 forwarding on (in iptables mode; with nftables it refuses to start
    without it). Inside a managed plugin /proc/sys is read-only, so a failure there is a
    warning: containers still talk to each other, only egress needs forwarding. IPv6
    forwarding dockerd turns on only for its own --ipv6, so a --ipv6 network that cannot
    have it is refused rather than created without IPv6 egress.
    """
    try:
        write_sysctl("net/ipv4/ip_forward", "1")
    except DriverError as err:
        log.warning("cannot enable forwarding (%s): containers will have no egress until it is on", err)
    if v6:
        _ipv6_forwarding()


def _ipv6_forwarding() -> None:
    try:
        if Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text().strip() == "1":
            return
        # With forwarding on, an interface ignores router advertisements unless
        # accept_ra is 2: keep the host's own RA-learned routes working.
        for conf in Path("/proc/sys/net/ipv6/conf").iterdir():
            if conf.name not in ("all", "default") and (conf / "accept_ra").read_text().strip() == "1":
                write_sysctl(f"net/ipv6/conf/{conf.name}/accept_ra", "2")
        write_sysctl("net/ipv6/conf/all/forwarding", "1")
    except (DriverError, OSError) as err:
        why = err.message if isinstance(err, DriverError) else str(err)
        raise Unsupported(
            f"--ipv6: IPv6 forwarding is off (net.ipv6.conf.all.forwarding=0) and cannot be turned on here ({why}), "
            "so containers would have no IPv6 egress (fix: `sysctl -w net.ipv6.conf.all.forwarding=1` on the host, "
            "and persist it in /etc/sysctl.d/)"
        ) from None


def _bridge_netfilter(net: NetworkRecord) -> None:
    """Traffic within the bridge must cross iptables (driver.firewall.bridgenf): icc=false
    is a DROP for it, so such a network is refused when it would not; for hairpin to a
    published port (any network with egress may publish one later) a warning is enough."""
    if net.config.icc:
        bridgenf.best_effort(net.config.enable_ipv6)
        return
    why = bridgenf.ensure(net.config.enable_ipv6)
    if why:
        raise Unsupported(f"option com.docker.network.bridge.enable_icc=false: {why}")


class BridgeMode:
    def __init__(self, nl: Netlink) -> None:
        self.nl = nl

    def mtu(self, net: NetworkRecord) -> int:
        return net.config.mtu or DEFAULT_MTU

    def bridge_mac(self, net: NetworkRecord) -> str:
        return random_mac()

    def check_coexistence(self, net: NetworkRecord, other: NetworkRecord) -> None:
        if bridge_name(other) == bridge_name(net):
            raise Conflict(
                f"option com.docker.network.bridge.name: bridge {bridge_name(net)} is already used by "
                f"network {other.id[:12]}"
            )

    def shares_device(self, net: NetworkRecord, other: NetworkRecord) -> bool:
        return False  # check_coexistence refuses a second network on one bridge

    def prepare_network(self, net: NetworkRecord) -> None:
        name = bridge_name(net)
        existing = self.nl.link(name)
        if existing is not None and existing.kind != "bridge":
            raise Conflict(f"option com.docker.network.bridge.name: {name} exists and is not a bridge")
        # An admin-made bridge named with -o com.docker.network.bridge.name is used as
        # Docker's own bridge driver does, and never deleted by us.
        net.owns_device = existing is None

    def create_network(self, net: NetworkRecord, steps: Steps) -> None:
        name = bridge_name(net)
        if net.owns_device:
            steps.run(
                f"create bridge {name}",
                lambda: self.nl.add_bridge(name, self.mtu(net), self.bridge_mac(net)),
                lambda: self.nl.delete(name),
            )
        else:
            log.info("adopting existing bridge %s for network %s", name, net.id[:12])
        self._configure(net, name, steps)

    def _configure(self, net: NetworkRecord, name: str, steps: Steps) -> None:
        if net.config.enable_ipv6:
            steps.run(f"enable IPv6 on {name}", lambda: write_sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "0"))
        if not net.config.icc or not net.config.internal:
            steps.run("bridged traffic through iptables", lambda: _bridge_netfilter(net))
        if not net.config.internal:
            steps.run("enable forwarding", lambda: _forwarding(net.config.enable_ipv6))
            # Publishing on 127.0.0.1 DNATs loopback traffic onto the bridge, which the
            # kernel drops as martian unless route_localnet is on (see firewall.rules).
            steps.run(f"route_localnet on {name}", lambda: self.nl.set_route_localnet(name))
        present = self.nl.addresses(name)  # an adopted bridge may hold them already: keep those
        for cidr in gateways(net):
            steps.run(
                f"add gateway {cidr} to {name}",
                partial(self.nl.add_address, name, cidr),
                None if cidr in present else partial(self.nl.remove_address, name, cidr),
            )
        steps.run(f"bring up {name}", lambda: self.nl.set_link(name, state="up"))

    def ensure_network(self, net: NetworkRecord) -> None:
        name = bridge_name(net)
        existing = self.nl.link(name)
        if existing is None:
            log.info("network %s: bridge %s is missing, recreating it", net.id[:12], name)
            self.nl.add_bridge(name, self.mtu(net), self.bridge_mac(net))
        elif existing.kind != "bridge":
            # Never configured as if it were ours: an address on someone's veth would
            # take their traffic. Reported, and retried until the name is free.
            raise Conflict(f"bridge {name}: a {existing.kind or 'device'} of that name is in the way")
        with Steps(f"ensure network {net.id[:12]}") as steps:
            self._configure(net, name, steps)

    def delete_network(self, net: NetworkRecord) -> None:
        name = bridge_name(net)
        if net.owns_device:
            self.nl.delete(name)
            return
        for cidr in gateways(net):
            self.nl.remove_address(name, cidr)

    def check_new_endpoint(self, net: NetworkRecord, existing: list[EndpointRecord]) -> None:
        return

    def assigns_mac(self, net: NetworkRecord) -> bool:
        return True

    @staticmethod
    def endpoint_names(endpoint_id: str) -> tuple[str, str]:
        """Host and container ends of the endpoint's veth pair."""
        return f"poh{endpoint_id[:12]}", f"poc{endpoint_id[:12]}"

    def create_endpoint(self, net: NetworkRecord, ep: EndpointRecord, steps: Steps) -> None:
        mtu = self.mtu(net)
        steps.run(
            f"create veth {ep.host_if}/{ep.ctr_if}",
            lambda: self.nl.add_veth(ep.host_if, ep.ctr_if, mtu, ep.mac or random_mac()),
            lambda: self.nl.delete(ep.host_if),
        )
        bridge = bridge_name(net)
        steps.run(f"attach {ep.host_if} to {bridge}", lambda: self.nl.set_master(ep.host_if, bridge))
        steps.run(f"hairpin on {ep.host_if}", lambda: self.nl.set_hairpin(ep.host_if, True))

    def delete_endpoint(self, net: NetworkRecord, ep: EndpointRecord) -> None:
        # Deleting either end removes the pair; the host end is the one that stays with us.
        if not self.nl.delete(ep.host_if):
            self.nl.delete(ep.ctr_if)

    def endpoint_alive(self, ep: EndpointRecord) -> bool:
        return self.nl.link(ep.host_if) is not None

    def device_names(self, net: NetworkRecord) -> set[str]:
        return {bridge_name(net)}
