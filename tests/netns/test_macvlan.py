"""Macvlan mode against the real kernel: parents, modes, VLANs and every refusal."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.netns.conftest import Sandboxes, ping
from tests.plugin import Plugin


def macvlan(nid: str, pool: str, gw: str, **opts: str) -> dict[str, Any]:
    return {
        "NetworkID": nid,
        "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": {"mode": "macvlan", **opts}},
        "IPv4Data": [{"AddressSpace": "PyoverlayLocal", "Gateway": gw, "Pool": pool}],
        "IPv6Data": [],
    }


def endpoint(nid: str, eid: str, addr: str, mac: str = "") -> dict[str, Any]:
    return {"NetworkID": nid, "EndpointID": eid, "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": mac}}


N1, N2, N3 = "a1" * 32, "b2" * 32, "c3" * 32


@pytest.fixture
def lan(plugin: Plugin) -> Plugin:
    """A parent 'eth1' (a veth whose peer plays the LAN switch port, with a router behind it)."""
    plugin.ns.ip("link", "add", "eth1", "mtu", "1500", "type", "veth", "peer", "name", "sw1")
    plugin.ns.ip("link", "add", "brx", "type", "bridge")
    for name in ("eth1", "sw1", "brx"):
        plugin.ns.set_up(name)
    return plugin


def test_containers_on_a_macvlan_network(lan: Plugin, sandboxes: Sandboxes) -> None:
    p = lan
    p.ok("NetworkDriver.CreateNetwork", macvlan(N1, "192.168.7.0/24", "192.168.7.1/24", parent="eth1"))
    assert "192.168.7.1" not in p.ns.run("ip", "addr").stdout, "the gateway is the LAN's router, not the host"
    reply = p.ok("NetworkDriver.CreateEndpoint", endpoint(N1, "1" * 64, "192.168.7.2/24", "02:42:c0:a8:07:99"))
    assert reply == {"Interface": {}}, "a MAC dockerd set is never echoed"
    dev = p.ns.ip_json("-d", "link", "show", "pom" + "1" * 12)[0]
    assert dev["linkinfo"]["info_kind"] == "macvlan" and dev["linkinfo"]["info_data"]["mode"] == "bridge"
    assert dev["link"] == "eth1" and dev["address"] == "02:42:c0:a8:07:99" and dev["mtu"] == 1500
    join = p.ok("NetworkDriver.Join", {"NetworkID": N1, "EndpointID": "1" * 64})
    assert join == {"InterfaceName": {"SrcName": "pom" + "1" * 12, "DstPrefix": "eth"}, "Gateway": "192.168.7.1"}
    p.ok("NetworkDriver.CreateEndpoint", endpoint(N1, "2" * 64, "192.168.7.3/24"))
    a = sandboxes.attach("pom" + "1" * 12, "192.168.7.2/24")
    b = sandboxes.attach("pom" + "2" * 12, "192.168.7.3/24")
    assert ping(a, "192.168.7.3") and ping(b, "192.168.7.2"), "bridge mode: siblings talk"
    sandboxes.cleanup()
    p.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": N1, "EndpointID": "1" * 64})
    p.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": N1, "EndpointID": "2" * 64})
    p.ok("NetworkDriver.DeleteNetwork", {"NetworkID": N1})
    assert "eth1" in p.link_names(), "the parent is never deleted"
    assert not [n for n in p.link_names() if n.startswith("po")]


def test_private_mode_isolates_siblings(lan: Plugin, sandboxes: Sandboxes) -> None:
    p = lan
    p.ok("NetworkDriver.CreateNetwork",
         macvlan(N1, "192.168.7.0/24", "192.168.7.1/24", parent="eth1", macvlan_mode="private"))
    for n in (2, 3):
        p.ok("NetworkDriver.CreateEndpoint", endpoint(N1, str(n) * 64, f"192.168.7.{n}/24"))
    a = sandboxes.attach("pom" + "2" * 12, "192.168.7.2/24")
    sandboxes.attach("pom" + "3" * 12, "192.168.7.3/24")
    assert not ping(a, "192.168.7.3")


def test_mtu_follows_parent_unless_lower(lan: Plugin) -> None:
    p = lan
    p.ns.ip("link", "set", "eth1", "mtu", "1400")
    p.ok("NetworkDriver.CreateNetwork", macvlan(N1, "192.168.7.0/24", "192.168.7.1/24", parent="eth1"))
    p.ok("NetworkDriver.CreateEndpoint", endpoint(N1, "1" * 64, "192.168.7.2/24"))
    assert p.ns.ip_json("link", "show", "pom" + "1" * 12)[0]["mtu"] == 1400
    lower = macvlan(N2, "192.168.8.0/24", "192.168.8.1/24", parent="eth1", **{"com.docker.network.driver.mtu": "1300"})
    p.ok("NetworkDriver.CreateNetwork", lower)
    p.ok("NetworkDriver.CreateEndpoint", endpoint(N2, "2" * 64, "192.168.8.2/24"))
    assert p.ns.ip_json("link", "show", "pom" + "2" * 12)[0]["mtu"] == 1300
    higher = macvlan(N3, "192.168.9.0/24", "192.168.9.1/24", parent="eth1", **{"com.docker.network.driver.mtu": "9000"})
    assert "9000 exceeds the MTU of parent eth1 (1400)" in p.err("NetworkDriver.CreateNetwork", higher, 400)


def test_networks_sharing_a_parent(lan: Plugin) -> None:
    p = lan
    p.ns.ip("link", "add", "eth2", "type", "veth", "peer", "name", "sw2")
    p.ok("NetworkDriver.CreateNetwork", macvlan(N1, "192.168.7.0/24", "192.168.7.1/24", parent="eth1"))
    p.ok("NetworkDriver.CreateNetwork", macvlan(N2, "192.168.8.0/24", "192.168.8.1/24", parent="eth1"))
    p.ok("NetworkDriver.CreateNetwork", macvlan(N3, "192.168.7.0/24", "192.168.7.1/24", parent="eth2"))
    before = p.snapshot()
    clash = macvlan("d4" * 32, "192.168.7.128/25", "192.168.7.129/25", parent="eth1")
    assert "already uses eth1 with subnet 192.168.7.0/24, which overlaps 192.168.7.128/25" in p.err(
        "NetworkDriver.CreateNetwork", clash, 409
    )
    passthru = macvlan("d4" * 32, "192.168.9.0/24", "192.168.9.1/24", parent="eth1", macvlan_mode="passthru")
    assert "passthru mode needs a parent to itself" in p.err("NetworkDriver.CreateNetwork", passthru, 409)
    assert p.snapshot() == before


def test_passthru_takes_one_endpoint(lan: Plugin) -> None:
    p = lan
    p.ok("NetworkDriver.CreateNetwork",
         macvlan(N1, "192.168.7.0/24", "192.168.7.1/24", parent="eth1", macvlan_mode="passthru"))
    reply = p.ok("NetworkDriver.CreateEndpoint", endpoint(N1, "1" * 64, "192.168.7.2/24"))
    assert reply == {"Interface": {}}, "passthru keeps the parent's MAC: none is imposed"
    assert p.ns.ip_json("-d", "link", "show", "pom" + "1" * 12)[0]["linkinfo"]["info_data"]["mode"] == "passthru"
    before = p.snapshot()
    err = p.err("NetworkDriver.CreateEndpoint", endpoint(N1, "2" * 64, "192.168.7.3/24"), 409)
    assert "passthru allows a single endpoint on parent eth1" in err
    assert p.snapshot() == before
    other = macvlan(N2, "192.168.8.0/24", "192.168.8.1/24", parent="eth1")
    assert "passthru mode needs a parent to itself" in p.err("NetworkDriver.CreateNetwork", other, 409)


@pytest.mark.parametrize(
    ("opts", "status", "message"),
    [
        ({}, 400, "option parent: macvlan needs -o parent=<host interface>"),
        ({"parent": "eth9"}, 400, "option parent: host interface eth9 does not exist"),
        ({"parent": "brx"}, 400, "brx is a bridge"),
        ({"parent": "lo"}, 400, "lo is the loopback device"),
        ({"parent": "eth1", "macvlan_mode": "nat"}, 400, "option macvlan_mode: unknown mode 'nat'"),
        ({"parent": "eth1;id"}, 400, "option parent: 'eth1;id' is not a valid interface name"),
        ({"parent": "eth1.5000"}, 400, "VLAN id 5000 in 'eth1.5000' is out of range 1-4094"),
        ({"parent": "eth9.10"}, 400, "host interface eth9 does not exist"),
    ],
)
def test_refusals_change_nothing(lan: Plugin, opts: dict[str, str], status: int, message: str) -> None:
    before = lan.snapshot()
    assert message in lan.err("NetworkDriver.CreateNetwork", macvlan(N1, "192.168.7.0/24", "192.168.7.1/24", **opts),
                              status)
    assert lan.snapshot() == before


def test_parent_that_is_our_own_bridge_is_refused(lan: Plugin) -> None:
    bridge = {"NetworkID": N2, "Options": {"com.docker.network.generic": {}},
              "IPv4Data": [{"Pool": "10.72.0.0/24", "Gateway": "10.72.0.1/24"}]}
    lan.ok("NetworkDriver.CreateNetwork", bridge)
    err = lan.err("NetworkDriver.CreateNetwork", macvlan(N1, "192.168.7.0/24", "192.168.7.1/24",
                                                         parent="po-" + N2[:12]), 400)
    assert "is a bridge" in err


def _kernel_has_vlan(p: Plugin) -> bool:
    r = p.ns.ip("link", "add", "link", "eth1", "name", "probe.9", "type", "vlan", "id", "9", check=False)
    if r.returncode == 0:
        p.ns.ip("link", "del", "probe.9")
    return r.returncode == 0


def test_vlan_parent_without_kernel_support_is_a_clear_error(lan: Plugin) -> None:
    if _kernel_has_vlan(lan):
        pytest.skip("this kernel has 802.1Q support: the error path cannot be reached here")
    before = lan.snapshot()
    err = lan.err("NetworkDriver.CreateNetwork", macvlan(N1, "192.168.7.0/24", "192.168.7.1/24", parent="eth1.10"),
                  501)
    assert "cannot create eth1.10: this kernel has no 802.1Q VLAN support (module 8021q)" in err
    assert lan.snapshot() == before


def test_vlan_parent_is_created_and_removed(lan: Plugin) -> None:
    if not _kernel_has_vlan(lan):
        pytest.skip("this kernel has no 802.1Q VLAN support (8021q): the working path needs it")
    lan.ns.ip("link", "add", "link", "eth1", "name", "eth1.20", "type", "vlan", "id", "20")  # the admin's own
    lan.ok("NetworkDriver.CreateNetwork", macvlan(N1, "192.168.7.0/24", "192.168.7.1/24", parent="eth1.10"))
    lan.ok("NetworkDriver.CreateNetwork", macvlan(N3, "192.168.9.0/24", "192.168.9.1/24", parent="eth1.10"))
    lan.ok("NetworkDriver.CreateNetwork", macvlan(N2, "192.168.8.0/24", "192.168.8.1/24", parent="eth1.20"))
    info = lan.ns.ip_json("-d", "link", "show", "eth1.10")[0]["linkinfo"]
    assert info["info_kind"] == "vlan" and info["info_data"]["id"] == 10
    lan.ok("NetworkDriver.DeleteNetwork", {"NetworkID": N1})
    assert "eth1.10" in lan.link_names(), "still used by the second network on it"
    lan.ok("NetworkDriver.DeleteNetwork", {"NetworkID": N3})
    lan.ok("NetworkDriver.DeleteNetwork", {"NetworkID": N2})
    names = lan.link_names()
    assert "eth1.10" not in names and "eth1.20" in names, "only the sub-interface we created is deleted"


def test_macvlan_state_survives_restart(lan: Plugin) -> None:
    p = lan
    p.ok("NetworkDriver.CreateNetwork", macvlan(N1, "192.168.7.0/24", "192.168.7.1/24", parent="eth1"))
    p.ok("NetworkDriver.CreateEndpoint", endpoint(N1, "1" * 64, "192.168.7.2/24"))
    p.restart(kill=True)
    assert p.ok("NetworkDriver.Join", {"NetworkID": N1, "EndpointID": "1" * 64})["Gateway"] == "192.168.7.1"
    assert "PYOVERLAY" not in p.iptables(), "macvlan networks need no firewall rules"
    body = json.loads(json.dumps(macvlan(N1, "192.168.7.0/24", "192.168.7.1/24", parent="eth1")))
    p.ok("NetworkDriver.CreateNetwork", body)  # a repeated create is fine
    p.ok("NetworkDriver.DeleteNetwork", {"NetworkID": N1})
    assert not [n for n in p.link_names() if n.startswith("po")]


# The macvlan points the netns crash campaign (bridge mode) cannot reach; VLAN creation
# needs 802.1Q, which this kernel lacks (its error path is tested above).
@pytest.mark.parametrize("point", ["create macvlan", "mark ready", "remove links", "forget record"])
def test_a_crash_mid_endpoint_leaves_no_macvlan_behind(lan: Plugin, point: str) -> None:
    p, eid = lan, "7" * 64
    p.ok("NetworkDriver.CreateNetwork", macvlan(N1, "192.168.7.0/24", "192.168.7.1/24", parent="eth1"))
    body = endpoint(N1, eid, "192.168.7.7/24")
    deleting = point in ("remove links", "forget record")
    if deleting:
        p.ok("NetworkDriver.CreateEndpoint", body)
        assert f"pom{eid[:12]}" in p.link_names()
    verb = "NetworkDriver.DeleteEndpoint" if deleting else "NetworkDriver.CreateEndpoint"
    p.driver.extra_env["PYOVERLAY_FAIL_STEP"] = f"crash:{point}"
    p.restart()
    with pytest.raises(Exception):  # noqa: B017 - the process died mid-request: a transport error
        p.raw(verb, (json.dumps(body) + "\n").encode())
    p.close()
    p.driver.kill9()
    assert p.driver.pid is None
    p.driver.extra_env.pop("PYOVERLAY_FAIL_STEP")
    p.driver.start()
    p.wait_ready()
    # A create dockerd never got an answer for is rolled back, a delete is finished.
    assert f"pom{eid[:12]}" not in p.link_names()
    assert not list((p.driver.state_dir / "store" / "endpoint").glob("*.json"))
    assert "eth1" in p.link_names(), "the parent is never touched"
    if deleting:
        assert p.err(verb, None, 400)  # dockerd's retry, with an empty body: refused, nothing changed
    p.ok("NetworkDriver.CreateEndpoint", body)  # the same create again goes through
    assert f"pom{eid[:12]}" in p.link_names()
    p.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": N1, "EndpointID": eid})
    p.ok("NetworkDriver.DeleteNetwork", {"NetworkID": N1})
    assert not [n for n in p.link_names() if n.startswith("po")]
