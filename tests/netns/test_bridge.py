"""Bridge mode against the real kernel, with a dockerd-style firewall (FORWARD DROP)."""

from __future__ import annotations

import json
from typing import Any

from tests.netns.conftest import Sandboxes, ping
from tests.plugin import Plugin

NID = "ab" * 32
NET: dict[str, Any] = {
    "NetworkID": NID,
    "Options": {
        "com.docker.network.enable_ipv6": True,
        "com.docker.network.generic": {"com.docker.network.driver.mtu": "1400"},
    },
    "IPv4Data": [{"AddressSpace": "PyoverlayLocal", "Gateway": "10.70.0.1/24", "Pool": "10.70.0.0/24"}],
    "IPv6Data": [{"AddressSpace": "PyoverlayLocal", "Gateway": "fd70:70::1/64", "Pool": "fd70:70::/64"}],
}
BRIDGE = "po-" + NID[:12]


def endpoint(eid: str, addr: str, addr6: str = "", mac: str = "") -> dict[str, Any]:
    return {
        "NetworkID": NID,
        "EndpointID": eid,
        "Interface": {"Address": addr, "AddressIPv6": addr6, "MacAddress": mac},
        "Options": {"com.docker.network.portmap": [], "com.docker.network.endpoint.exposedports": []},
    }


def link(p: Plugin, name: str) -> dict[str, Any]:
    return p.ns.ip_json("-d", "link", "show", name)[0]


def dockerd_firewall(p: Plugin) -> None:
    """What dockerd 20.10 does to its namespace: FORWARD policy DROP (br_netfilter is on)."""
    p.ns.run("iptables", "-P", "FORWARD", "DROP")
    p.ns.run("ip6tables", "-P", "FORWARD", "DROP")
    assert p.ns.run("cat", "/proc/sys/net/bridge/bridge-nf-call-iptables").stdout.strip() == "1"


def test_network_and_endpoint_plumbing(plugin: Plugin) -> None:
    plugin.ok("NetworkDriver.CreateNetwork", NET)
    br = link(plugin, BRIDGE)
    assert br["linkinfo"]["info_kind"] == "bridge" and br["mtu"] == 1400 and "UP" in br["flags"]
    addrs = plugin.ns.ip_json("addr", "show", BRIDGE)[0]["addr_info"]
    assert {(a["local"], a["prefixlen"]) for a in addrs} >= {("10.70.0.1", 24), ("fd70:70::1", 64)}
    assert not any(a.get("tentative") for a in addrs), "the v6 gateway must be usable at once (NODAD)"
    localnet = plugin.ns.run("cat", f"/proc/sys/net/ipv4/conf/{BRIDGE}/route_localnet").stdout.strip()
    assert localnet == "1", "loopback publishing needs route_localnet (set over netlink)"

    reply = plugin.ok("NetworkDriver.CreateEndpoint", endpoint("1" * 64, "10.70.0.2/24", "fd70:70::2/64"))
    assert reply == {"Interface": {"MacAddress": "02:42:0a:46:00:02"}}
    host, ctr = link(plugin, "poh" + "1" * 12), link(plugin, "poc" + "1" * 12)
    assert host["master"] == BRIDGE and "UP" in host["flags"]
    assert host["mtu"] == ctr["mtu"] == 1400
    assert ctr["address"] == "02:42:0a:46:00:02"
    ctr_addrs = plugin.ns.ip_json("addr", "show", ctr["ifname"])[0]["addr_info"]
    assert all(a["scope"] == "link" for a in ctr_addrs), "libnetwork addresses the container end, not the driver"

    join = plugin.ok("NetworkDriver.Join", {"NetworkID": NID, "EndpointID": "1" * 64, "SandboxKey": "/x"})
    assert join == {"InterfaceName": {"SrcName": "poc" + "1" * 12, "DstPrefix": "eth"},
                    "Gateway": "10.70.0.1", "GatewayIPv6": "fd70:70::1"}
    rules = plugin.iptables()
    assert f"-A PYOVERLAY-FORWARD -i {BRIDGE} -o {BRIDGE} -j ACCEPT" in rules
    assert "-A FORWARD -j PYOVERLAY-FORWARD" in rules
    assert f"-i {BRIDGE} -o {BRIDGE} -j ACCEPT" in plugin.iptables(v6=True)

    plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": "1" * 64})
    assert not {"poh" + "1" * 12, "poc" + "1" * 12} & plugin.link_names()
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    assert not any(n.startswith("po") for n in plugin.link_names())
    assert "PYOVERLAY" not in plugin.iptables() and "PYOVERLAY" not in plugin.iptables(v6=True)


def test_containers_talk_through_forward_drop(plugin: Plugin, sandboxes: Sandboxes) -> None:
    dockerd_firewall(plugin)
    plugin.ok("NetworkDriver.CreateNetwork", NET)
    for eid, n in (("1" * 64, 2), ("2" * 64, 3)):
        plugin.ok("NetworkDriver.CreateEndpoint", endpoint(eid, f"10.70.0.{n}/24", f"fd70:70::{n}/64"))
    a = sandboxes.attach("poc" + "1" * 12, "10.70.0.2/24", "10.70.0.1")
    b = sandboxes.attach("poc" + "2" * 12, "10.70.0.3/24", "10.70.0.1")
    # nodad, as libnetwork adds them: usable at once rather than "tentative" for a while
    a.ip("addr", "add", "fd70:70::2/64", "dev", "eth0", "nodad")
    b.ip("addr", "add", "fd70:70::3/64", "dev", "eth0", "nodad")
    assert ping(a, "10.70.0.1") and ping(a, "10.70.0.3") and ping(b, "10.70.0.2")
    assert ping(a, "fd70:70::3", count=3)
    # Prove the rules are what makes it work: without them the FORWARD policy drops.
    plugin.ns.run("iptables", "-F", "PYOVERLAY-FORWARD")
    assert not ping(a, "10.70.0.3")
    # ...and that a restart puts them back (reconciliation rewrites our chains).
    plugin.restart()
    assert ping(a, "10.70.0.3")
    assert plugin.iptables().count(f"-A PYOVERLAY-FORWARD -i {BRIDGE} -o {BRIDGE} -j ACCEPT") == 1


def test_repeated_calls_are_idempotent(plugin: Plugin) -> None:
    plugin.ok("NetworkDriver.CreateNetwork", NET)
    plugin.ok("NetworkDriver.CreateNetwork", NET)
    ep = endpoint("3" * 64, "10.70.0.9/24")
    first = plugin.ok("NetworkDriver.CreateEndpoint", ep)
    assert plugin.ok("NetworkDriver.CreateEndpoint", ep) == first
    assert plugin.iptables().count("-A FORWARD -j PYOVERLAY-FORWARD") == 1
    assert plugin.iptables().count(f"-i {BRIDGE} -o {BRIDGE} -j ACCEPT") == 1
    changed = json.loads(json.dumps(NET))
    changed["Options"]["com.docker.network.generic"]["com.docker.network.driver.mtu"] = "1300"
    assert "already exists with different settings" in plugin.err("NetworkDriver.CreateNetwork", changed, 409)
    other = endpoint("3" * 64, "10.70.0.10/24")
    assert "already exists with different settings" in plugin.err("NetworkDriver.CreateEndpoint", other, 409)
    for _ in range(2):
        plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": "3" * 64})
        plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    assert not any(n.startswith("po") for n in plugin.link_names())


def test_delete_network_removes_leftover_endpoints(plugin: Plugin) -> None:
    plugin.ok("NetworkDriver.CreateNetwork", NET)
    plugin.ok("NetworkDriver.CreateEndpoint", endpoint("4" * 64, "10.70.0.4/24"))
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    assert not any(n.startswith("po") for n in plugin.link_names())
    assert not list((plugin.driver.state_dir / "store").rglob("*.json"))


def test_adopted_bridge_is_kept(plugin: Plugin) -> None:
    plugin.ns.ip("link", "add", "br-admin", "type", "bridge")
    body = json.loads(json.dumps(NET))
    body["Options"]["com.docker.network.generic"] = {"com.docker.network.bridge.name": "br-admin"}
    body["Options"]["com.docker.network.enable_ipv6"] = False
    body["IPv6Data"] = []
    plugin.ok("NetworkDriver.CreateNetwork", body)
    assert "10.70.0.1" in plugin.ns.run("ip", "addr", "show", "br-admin").stdout
    second = {**body, "NetworkID": "cd" * 32}
    assert "bridge br-admin is already used by network abababababab" in plugin.err(
        "NetworkDriver.CreateNetwork", second, 409
    )
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    assert "br-admin" in plugin.link_names(), "a bridge we did not create is never deleted"
    assert "10.70.0.1" not in plugin.ns.run("ip", "addr", "show", "br-admin").stdout


def test_name_of_a_non_bridge_is_refused(plugin: Plugin) -> None:
    plugin.ns.ip("link", "add", "vx0", "type", "veth", "peer", "name", "vx1")
    body = json.loads(json.dumps(NET))
    body["Options"]["com.docker.network.generic"] = {"com.docker.network.bridge.name": "vx0"}
    before = plugin.snapshot()
    assert "vx0 exists and is not a bridge" in plugin.err("NetworkDriver.CreateNetwork", body, 409)
    assert plugin.snapshot() == before


def test_auto_pool_avoids_routes_of_the_namespace(plugin: Plugin) -> None:
    plugin.ns.ip("link", "add", "up0", "type", "veth", "peer", "name", "up1")
    plugin.ns.addr_add("up0", "10.200.0.1/24")
    plugin.ns.set_up("up0")
    plugin.ns.set_up("up1")
    pool = plugin.ok("IpamDriver.RequestPool", {"AddressSpace": "PyoverlayLocal", "Pool": "", "V6": False})
    assert pool["Pool"] == "10.200.1.0/24"


def test_published_rules_exactly_once_across_restarts(plugin: Plugin) -> None:
    plugin.ok("NetworkDriver.CreateNetwork", NET)
    eid = "7" * 64
    plugin.ok("NetworkDriver.CreateEndpoint", endpoint(eid, "10.70.0.7/24", "fd70:70::7/64"))
    portmap = [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080},
               {"Proto": 17, "IP": "", "Port": 53, "HostIP": "127.0.0.1", "HostPort": 5353, "HostPortEnd": 5353}]
    program = {"NetworkID": NID, "EndpointID": eid, "Options": {"com.docker.network.portmap": portmap}}
    dnat4 = "--dport 8080 -j DNAT --to-destination 10.70.0.7:80"
    dnat6 = "--dport 8080 -j DNAT --to-destination [fd70:70::7]:80"
    for _ in range(2):  # a repeated Program changes nothing
        plugin.ok("NetworkDriver.ProgramExternalConnectivity", program)
    plugin.restart(kill=True)
    v4, v6 = plugin.iptables(), plugin.iptables(v6=True)
    assert v4.count(dnat4) == 1 and v6.count(dnat6) == 1
    assert v4.count("-d 127.0.0.1/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 10.70.0.7:53") == 1
    assert "5353" not in v6, "a 127.0.0.1 binding is IPv4 only"
    assert v4.count("-A PREROUTING -m addrtype --dst-type LOCAL -j PYOVERLAY-DNAT") == 1
    plugin.ok("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NID, "EndpointID": eid})
    assert dnat4 not in plugin.iptables() and dnat6 not in plugin.iptables(v6=True)
    plugin.ok("NetworkDriver.ProgramExternalConnectivity", program)
    # DeleteEndpoint without Revoke (as after a plugin re-enable) still removes them
    plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": eid})
    assert dnat4 not in plugin.iptables()


def test_host_binding_ipv4_is_the_default_host_address(plugin: Plugin) -> None:
    body = json.loads(json.dumps(NET))
    body["Options"]["com.docker.network.generic"]["com.docker.network.bridge.host_binding_ipv4"] = "127.0.0.1"
    plugin.ok("NetworkDriver.CreateNetwork", body)
    eid = "8" * 64
    plugin.ok("NetworkDriver.CreateEndpoint", endpoint(eid, "10.70.0.8/24", "fd70:70::8/64"))
    portmap = [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8088, "HostPortEnd": 8088}]
    plugin.ok("NetworkDriver.ProgramExternalConnectivity",
              {"NetworkID": NID, "EndpointID": eid, "Options": {"com.docker.network.portmap": portmap}})
    assert "-A PYOVERLAY-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 8088 -j DNAT" in plugin.iptables()
    assert "8088" not in plugin.iptables(v6=True), "a host_binding_ipv4 binding is IPv4 only"
