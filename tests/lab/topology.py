"""Small reusable topologies around an engine's netns: an "outside" host and a LAN."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .netns import Netns, add_bridge, link_veth


@dataclass(frozen=True)
class Outside:
    """A host beyond the engine's uplink: egress/NAT and published-port tests talk to it.

    The outside netns has only its connected /24: it cannot route anywhere, so
    nothing from the lab can leave it.
    """

    ns: Netns
    engine_ns: Netns
    engine_if: str
    engine_ip: str
    ip: str
    prefixlen: int


@dataclass(frozen=True)
class Lan:
    """A LAN: `engine_ns:parent_if` (macvlan parent, no address) is a port of bridge `bridge` in `ns`.

    `ns` holds the router address; `host_ns` is a second LAN host.
    """

    ns: Netns
    host_ns: Netns
    engine_ns: Netns
    parent_if: str
    bridge: str
    subnet: str
    router_ip: str
    host_ip: str


def connect_outside(
    engine_ns: Netns,
    outside_ns: Netns,
    *,
    subnet: str = "192.0.2.0/24",
    engine_if: str = "out0",
    outside_if: str = "eth0",
    default_route: bool = True,
) -> Outside:
    """veth engine `out0` .1 <-> outside `eth0` .2, default route in the engine ns via .2."""
    net = ipaddress.ip_network(subnet)
    engine_ip, outside_ip = str(net[1]), str(net[2])
    link_veth(
        engine_ns,
        engine_if,
        outside_ns,
        outside_if,
        f"{engine_ip}/{net.prefixlen}",
        f"{outside_ip}/{net.prefixlen}",
    )
    if default_route:
        engine_ns.ip("route", "add", "default", "via", outside_ip, "dev", engine_if)
    return Outside(outside_ns, engine_ns, engine_if, engine_ip, outside_ip, net.prefixlen)


def connect_lan(
    engine_ns: Netns,
    lan_ns: Netns,
    host_ns: Netns,
    *,
    subnet: str = "198.51.100.0/24",
    parent_if: str = "lan0",
    bridge: str = "br0",
    host_offset: int = 10,
) -> Lan:
    """LAN bridge in `lan_ns` with the router at .1, engine port `parent_if`, LAN host at .`host_offset`."""
    net = ipaddress.ip_network(subnet)
    router_ip, host_ip = str(net[1]), str(net[host_offset])
    link_veth(engine_ns, parent_if, lan_ns, "p-engine")
    link_veth(host_ns, "eth0", lan_ns, "p-host", f"{host_ip}/{net.prefixlen}")
    add_bridge(lan_ns, bridge, f"{router_ip}/{net.prefixlen}", ports=("p-engine", "p-host"))
    host_ns.ip("route", "add", "default", "via", router_ip)
    return Lan(lan_ns, host_ns, engine_ns, parent_if, bridge, str(net), router_ip, host_ip)
