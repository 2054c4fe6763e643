"""The adapter's VXLAN primitives against the real kernel: a static overlay between two "hosts".

    c1 (10.60.0.2)                                   c2 (10.60.0.3)
      eth0 ── vc1 ┐                                ┌ vc2 ── eth0
                 br0 10.60.0.1 ── vx0 (VNI 42) ═══ vx0 ── br0 10.60.0.1
    h1 ───────── ul0 10.99.0.11/24 ── MTU 1400 ── ul0 10.99.0.12/24 ─────── h2

Every namespace is created for this module and deleted after it; the adapter runs inside
the host namespaces (see vxlan_helpers.Remote), exactly as the driver runs in dockerd's.
Each test programs the entries it needs first, so tests do not depend on their order.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.lab import Netns, link_veth
from tests.netns.vxlan_helpers import Remote, call, ping_ok

VNI, PORT, UL_MTU, MTU = 42, 4789, 1400, 1350
_n = itertools.count()


@dataclass(frozen=True)
class Endpoint:
    ip: str
    ip6: str
    mac: str
    vtep: str  # underlay address of the host it lives on


C1 = Endpoint("10.60.0.2", "fd60::2", "02:42:0a:3c:00:02", "10.99.0.11")
C2 = Endpoint("10.60.0.3", "fd60::3", "02:42:0a:3c:00:03", "10.99.0.12")


@dataclass
class Host:
    ns: Netns
    nl: Remote
    container: Netns
    local: Endpoint  # the container on this host
    remote: Endpoint  # the one on the other host

    def program(self) -> None:
        """Entries for the remote container: FDB MAC -> VTEP, neighbours IP -> MAC (v4 and v6)."""
        e = self.remote
        self.nl.batch(
            call("fdb_replace", "vx0", e.mac, e.vtep),
            call("neigh_replace", "vx0", e.ip, e.mac),
            call("neigh_replace", "vx0", e.ip6, e.mac),
        )

    def clear(self) -> None:
        e = self.remote
        self.nl.batch(
            call("fdb_delete", "vx0", e.mac, bridge="br0"),
            call("neigh_delete", "vx0", e.ip),
            call("neigh_delete", "vx0", e.ip6),
        )

    def bridge_rows(self, mac: str) -> list[str]:
        """``bridge fdb`` rows for ``mac`` on vx0 (self and master), as iproute2 prints them."""
        out = self.ns.run("bridge", "fdb", "show", "dev", "vx0").stdout
        return [line for line in out.splitlines() if line.startswith(mac)]


@dataclass
class Overlay:
    h1: Host
    h2: Host

    def program(self) -> None:
        self.h1.program()
        self.h2.program()


def _build_host(ns: Netns, ctr: Netns, i: int, local: Endpoint, remote: Endpoint) -> Host:
    """Bridge with the (same) gateway address on every host, the vxlan device (made by the
    adapter) enslaved to it, and the container on a veth into the bridge."""
    ns.ip("link", "add", "br0", "type", "bridge")
    ns.addr_add("br0", "10.60.0.1/24")
    ns.set_up("br0")
    nl = Remote(ns)
    nl.batch(
        call("add_vxlan", "vx0", VNI, local.vtep, PORT, mtu=MTU, mac=f"02:00:00:00:00:0{i}", dev="ul0"),
        call("set_master", "vx0", "br0"),
    )
    link_veth(ns, f"vc{i}", ctr, "eth0", mtu=MTU)
    ns.ip("link", "set", f"vc{i}", "master", "br0")
    ctr.ip("link", "set", "eth0", "address", local.mac)
    ctr.addr_add("eth0", f"{local.ip}/24")
    ctr.ip("addr", "add", f"{local.ip6}/64", "dev", "eth0", "nodad")
    return Host(ns, nl, ctr, local, remote)


@pytest.fixture(scope="module")
def overlay() -> Iterator[Overlay]:
    prefix = f"pov{os.getpid() % 100000}x{next(_n)}"
    made: list[Netns] = []
    try:
        for name in ("h1", "h2", "c1", "c2"):
            made.append(Netns(prefix + name))
            made[-1].create()
        h1, h2, c1, c2 = made
        link_veth(h1, "ul0", h2, "ul0", f"{C1.vtep}/24", f"{C2.vtep}/24", mtu=UL_MTU)
        yield Overlay(_build_host(h1, c1, 1, C1, C2), _build_host(h2, c2, 2, C2, C1))
    finally:
        for ns in made:
            ns.delete()


@pytest.fixture
def scratch() -> Iterator[Netns]:
    """A namespace of its own, for the route and address look-ups."""
    ns = Netns(f"pov{os.getpid() % 100000}x{next(_n)}r")
    try:
        yield ns.create()
    finally:
        ns.delete()


def test_programmed_entries_carry_traffic_both_ways(overlay: Overlay) -> None:
    overlay.program()
    assert ping_ok(overlay.h1.container, C2.ip), "c1 -> c2 across the tunnel"
    assert ping_ok(overlay.h2.container, C1.ip), "c2 -> c1 across the tunnel"
    # proxy ARP answered on the local vxlan device, from the programmed neighbour
    neigh = overlay.h1.container.ip_json("neigh", "show", C2.ip, "dev", "eth0")
    assert neigh and neigh[0]["lladdr"] == C2.mac
