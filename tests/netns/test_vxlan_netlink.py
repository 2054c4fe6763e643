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
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.lab import Netns, link_veth
from tests.netns.vxlan_helpers import Call, Remote, RemoteError, call, df_ping, link_stats, ping, ping_ok, snmp

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


def _build_host(nl: Remote, ctr: Netns, i: int, local: Endpoint, remote: Endpoint) -> Host:
    """Bridge with the (same) gateway address on every host, the vxlan device (made by the
    adapter) enslaved to it, and the container on a veth into the bridge."""
    ns = nl.ns
    ns.ip("link", "add", "br0", "type", "bridge")
    ns.addr_add("br0", "10.60.0.1/24")
    ns.set_up("br0")
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


def _fresh(name: str) -> Netns:
    """A namespace name nobody uses, so the clean-up deletes only what this module made."""
    ns = Netns(name)
    if ns.exists():
        raise RuntimeError(f"netns {name} already exists")
    return ns


@pytest.fixture(scope="module")
def overlay() -> Iterator[Overlay]:
    prefix = f"pov{os.getpid() % 100000}x{next(_n)}"
    made: list[Netns] = []
    workers: list[Remote] = []
    try:
        for name in ("h1", "h2", "c1", "c2"):
            made.append(_fresh(prefix + name))
            made[-1].create()
        h1, h2, c1, c2 = made
        workers += [Remote(h1), Remote(h2)]
        link_veth(h1, "ul0", h2, "ul0", f"{C1.vtep}/24", f"{C2.vtep}/24", mtu=UL_MTU)
        yield Overlay(_build_host(workers[0], c1, 1, C1, C2), _build_host(workers[1], c2, 2, C2, C1))
    finally:
        for w in workers:
            w.close()
        for ns in made:
            ns.delete()


@pytest.fixture
def scratch() -> Iterator[Netns]:
    """A namespace of its own, for the route and address look-ups."""
    ns = _fresh(f"pov{os.getpid() % 100000}x{next(_n)}r")
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


def test_mtu_is_exact_and_outer_packets_are_not_fragmented(overlay: Overlay) -> None:
    overlay.program()
    c1, h1 = overlay.h1.container, overlay.h1.ns
    assert ping_ok(c1, C2.ip)
    frags = snmp(h1, "Ip")["FragCreates"]
    assert df_ping(c1, C2.ip, MTU - 28) == 0, "1322 data bytes: a 1350-byte packet, 1400 on the underlay"
    assert snmp(h1, "Ip")["FragCreates"] == frags, "the encapsulated packet fitted the 1400-byte underlay whole"
    assert df_ping(c1, C2.ip, MTU - 27) == 2, "1323 bytes with DF set is refused: larger than the overlay MTU"


def test_removed_entries_stop_traffic_and_readding_restores_it(overlay: Overlay) -> None:
    h1, c1 = overlay.h1, overlay.h1.container
    overlay.program()
    assert ping_ok(c1, C2.ip)
    assert any("master br0" in row for row in h1.bridge_rows(C2.mac)), "br0 learned c2's MAC on vx0"

    h1.nl.fdb_delete("vx0", C2.mac)
    rows = h1.bridge_rows(C2.mac)
    assert rows and all("master br0" in row for row in rows), "without bridge=, only the self row goes"
    h1.nl.batch(call("fdb_delete", "vx0", C2.mac, bridge="br0"), call("neigh_delete", "vx0", C2.ip))
    assert h1.bridge_rows(C2.mac) == [], "with bridge=, the learned row goes too"
    assert C2.ip not in h1.nl.neigh_entries("vx0")
    assert not ping(c1, C2.ip), "cached MAC or a new ARP: no FDB row and no neighbour, vx0 drops either"

    h1.program()
    assert ping_ok(c1, C2.ip)


def test_fdb_replace_overwrites_the_destination(overlay: Overlay) -> None:
    h1 = overlay.h1
    overlay.program()
    h1.nl.fdb_replace("vx0", C2.mac, "10.99.0.13")
    assert h1.nl.fdb_entries("vx0") == {C2.mac: "10.99.0.13"}
    assert [r for r in h1.bridge_rows(C2.mac) if "self" in r] == [f"{C2.mac} dst 10.99.0.13 self permanent"]
    assert not ping(h1.container, C2.ip), "the row now points at a VTEP nobody has"
    h1.program()
    assert h1.nl.fdb_entries("vx0") == {C2.mac: C2.vtep}
    assert ping_ok(h1.container, C2.ip)


def _tunnel_counters(o: Overlay) -> tuple[int, int, int]:
    """Frames h1's vx0 encapsulated, frames h2's vx0 decapsulated, UDP datagrams h2 took in."""
    return (link_stats(o.h1.ns, "vx0")["tx"]["packets"], link_stats(o.h2.ns, "vx0")["rx"]["packets"],
            snmp(o.h2.ns, "Udp")["InDatagrams"])


def test_nothing_is_flooded_without_entries(overlay: Overlay) -> None:
    c1 = overlay.h1.container
    overlay.program()
    before = _tunnel_counters(overlay)
    assert ping_ok(c1, C2.ip)
    after = _tunnel_counters(overlay)
    assert all(a > b for a, b in zip(after, before, strict=True)), "positive control: the counters see a ping"

    overlay.h1.clear()
    overlay.h2.clear()
    c1.ip("neigh", "flush", "dev", "eth0")
    assert not ping(c1, "10.60.0.99"), "ARP for an unknown address: broadcast"
    assert not ping(c1, C2.ip), "ARP for c2, whose neighbour entry is gone"
    c1.ip("neigh", "replace", C2.ip, "lladdr", C2.mac, "dev", "eth0", "nud", "permanent")
    assert not ping(c1, C2.ip), "unicast to a MAC with no FDB row"
    c1.ip("neigh", "del", C2.ip, "dev", "eth0")
    assert _tunnel_counters(overlay) == after, "no frame crossed the tunnel"


def test_idempotent_and_conflicting_calls(overlay: Overlay) -> None:
    h1 = overlay.h1
    overlay.program()
    before = h1.nl.vxlan("vx0")
    ul0 = h1.ns.ip_json("link", "show", "ul0")[0]["ifindex"]
    assert before == {"vni": VNI, "local": C1.vtep, "port": PORT, "link": ul0, "learning": False, "proxy": True,
                      "mtu": MTU}
    index = h1.ns.ip_json("link", "show", "vx0")[0]["ifindex"]
    h1.nl.add_vxlan("vx0", VNI, C1.vtep, PORT, mtu=MTU, mac="02:00:00:00:00:01", dev="ul0")
    vx0 = h1.ns.ip_json("link", "show", "vx0")[0]
    assert (vx0["ifindex"], vx0["master"], "UP" in vx0["flags"]) == (index, "br0", True), "left as it was"

    def add(name: str, vni: int, local: str, port: int) -> Call:
        return call("add_vxlan", name, vni, local, port, mtu=MTU, mac="02:00:00:00:00:09")

    errors = h1.nl.outcomes(
        add("vx0", 43, C1.vtep, PORT),
        add("vx0", VNI, "10.99.0.99", PORT),
        add("vx0", VNI, C1.vtep, 8472),
        add("br0", VNI, C1.vtep, PORT),
        add("vx9", VNI, C1.vtep, PORT),  # VNI 42 on port 4789 is vx0's
    )
    assert all(isinstance(e, RemoteError) and e.kind == "Conflict" for e in errors), errors
    expected = ["VNI 42 (wanted 43)", "local 10.99.0.11 (wanted 10.99.0.99)", "port 4789 (wanted 8472)",
                "br0 exists and is a bridge, not a vxlan", "create vxlan vx9"]
    for e, text in zip(errors, expected, strict=True):
        assert text in e.message
    assert h1.nl.batch(call("vxlan", "br0"), call("vxlan", "nope")) == [None, None]

    assert h1.nl.fdb_entries("vx0") == {C2.mac: C2.vtep}, "only the programmed row: no multicast, no default"
    assert h1.nl.neigh_entries("vx0") == {C2.ip: C2.mac, C2.ip6: C2.mac}
    h1.nl.batch(  # programming the same again, and deleting what is not there, are no-ops
        call("fdb_replace", "vx0", C2.mac, C2.vtep),
        call("neigh_replace", "vx0", C2.ip, C2.mac),
        call("fdb_delete", "vx0", "02:42:0a:3c:00:99", bridge="br0"),
        call("fdb_delete", "vx0", "02:42:0a:3c:00:99"),
        call("neigh_delete", "vx0", "10.60.0.99"),
        call("neigh_delete", "vx0", "fd60::99"),
        call("fdb_delete", "nope", C2.mac, bridge="br0"),
        call("neigh_delete", "nope", C2.ip),
    )
    assert h1.nl.fdb_entries("vx0") == {C2.mac: C2.vtep}
    assert h1.nl.neigh_entries("vx0") == {C2.ip: C2.mac, C2.ip6: C2.mac}
    assert h1.nl.link_of_address(C1.vtep)["name"] == "ul0"
    with pytest.raises(RemoteError, match="Address family not supported"):
        h1.nl.fdb_replace("vx0", C2.mac, "fd99::12")  # an IPv4 vxlan takes IPv4 VTEPs only


def test_a_vxlan_port_taken_by_another_socket_is_named_when_the_device_goes_up(overlay: Overlay) -> None:
    """The kernel binds a VXLAN device's UDP port only when it goes up: that is where a
    port held by another program fails (reconciliation reports it, and retries)."""
    h1 = overlay.h1
    holder = h1.ns.popen([sys.executable, "-c", "import socket, sys, time\n"
                          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 8472))\n"
                          "print('bound', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "bound"
        h1.nl.add_vxlan("vx8", 43, C1.vtep, 8472, mtu=MTU, mac="02:00:00:00:00:08", dev="ul0")
        with pytest.raises(RemoteError) as caught:
            h1.nl.set_link("vx8", state="up")
        assert caught.value.kind == "AddressInUse" and "Address already in use" in caught.value.message
    finally:
        holder.kill()
        holder.wait()
    h1.nl.set_link("vx8", state="up")  # the port free again: the same call goes through
    assert "UP" in h1.ns.ip_json("link", "show", "vx8")[0]["flags"]
    h1.nl.delete("vx8")


def test_address_and_default_route_lookups(scratch: Netns) -> None:
    ns = scratch
    ns.ip("link", "add", "r0", "type", "veth", "peer", "name", "r1")
    ns.set_up("r1")
    ns.set_up("r0")
    for cidr in ("192.0.2.10/24", "192.0.2.20/24"):
        ns.addr_add("r0", cidr)
    ns.ip("addr", "add", "2001:db8:1::10/64", "dev", "r0", "nodad")
    with Remote(ns) as nl:
        _lookups(ns, nl)


def _lookups(ns: Netns, nl: Remote) -> None:
    found, missing, v6, no4, no6 = nl.batch(
        call("link_of_address", "192.0.2.20"),
        call("link_of_address", "192.0.2.99"),
        call("link_of_address", "2001:db8:1:0:0::10"),  # not the canonical spelling
        call("default_route_source"),
        call("default_route_source", v6=True),
    )
    assert (found["name"], missing, v6["name"], no4, no6) == ("r0", None, "r0", None, None)

    ns.ip("route", "add", "default", "via", "192.0.2.1")
    ns.ip("-6", "route", "add", "default", "via", "2001:db8:1::1")
    src4, src6 = nl.batch(call("default_route_source"), call("default_route_source", v6=True))
    assert (src4[0], src4[1]["name"]) == ("192.0.2.10", "r0"), "the primary address of the route's device"
    assert (src6[0], src6[1]["name"]) == ("2001:db8:1::10", "r0")
    ns.ip("route", "replace", "default", "via", "192.0.2.1", "src", "192.0.2.20")
    assert nl.default_route_source()[0] == "192.0.2.20", "the kernel's choice: the route's own src wins"


def test_ipv6_overlay_and_ipv6_underlay(overlay: Overlay) -> None:
    h1, h2 = overlay.h1, overlay.h2
    overlay.program()
    assert h1.nl.neigh_entries("vx0")[C2.ip6] == C2.mac
    assert ping_ok(h1.container, C2.ip6), "proxy ND answered c1's solicitation for c2 from vx0's table"
    assert ping_ok(h2.container, C1.ip6)

    # A second device on an IPv6 underlay: flannel style, the address on the vxlan itself.
    for host, own, peer, i in ((h1, "fd99::11", "fd99::12", 1), (h2, "fd99::12", "fd99::11", 2)):
        host.ns.ip("addr", "add", f"{own}/64", "dev", "ul0", "nodad")
        host.nl.batch(
            call("add_vxlan", "vx6", 43, own, PORT, mtu=UL_MTU - 70, mac=f"02:00:00:00:06:0{i}", dev="ul0"),
            call("set_link", "vx6", state="up"),
            call("fdb_replace", "vx6", f"02:00:00:00:06:0{3 - i}", peer),
            call("neigh_replace", "vx6", f"10.61.0.{3 - i}", f"02:00:00:00:06:0{3 - i}"),
        )
        host.ns.addr_add("vx6", f"10.61.0.{i}/24")
    info = h1.nl.vxlan("vx6")
    assert (info["local"], info["vni"], info["mtu"]) == ("fd99::11", 43, 1330)
    assert h1.nl.fdb_entries("vx6") == {"02:00:00:00:06:02": "fd99::12"}
    assert ping_ok(h1.ns, "10.61.0.2"), "IPv4 over VXLAN over IPv6"
    h1.nl.add_vxlan("vx6", 43, "fd99:0::11", PORT, mtu=1330, mac="02:00:00:00:06:01")  # same shape, other spelling
