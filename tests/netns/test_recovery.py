"""Restarts and crashes: state survives, the kernel is reconciled, nothing leaks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.netns.test_bridge import BRIDGE, NET, NID, endpoint, link
from tests.netns.test_macvlan import macvlan
from tests.plugin import Plugin

MakePlugin = Callable[[dict[str, str]], Plugin]

EP = "5" * 64


def test_state_survives_kill9(plugin: Plugin) -> None:
    pool = plugin.ok("IpamDriver.RequestPool", {"AddressSpace": "PyoverlayLocal", "Pool": "10.70.0.0/24"})
    req = {"PoolID": pool["PoolID"], "Address": "", "Options": None}
    assert plugin.ok("IpamDriver.RequestAddress", req)["Address"] == "10.70.0.1/24"
    plugin.ok("NetworkDriver.CreateNetwork", NET)
    plugin.ok("NetworkDriver.CreateEndpoint", endpoint(EP, "10.70.0.5/24"))
    plugin.restart(kill=True)
    # no address is handed out twice, the network and endpoint are still known
    assert plugin.ok("IpamDriver.RequestAddress", req)["Address"] == "10.70.0.2/24"
    assert plugin.ok("NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EP})["Gateway"] == "10.70.0.1"
    assert plugin.iptables().count(f"-A PYOVERLAY-FORWARD -i {BRIDGE} -o {BRIDGE} -j ACCEPT") == 1
    plugin.ok("NetworkDriver.CreateEndpoint", endpoint("6" * 64, "10.70.0.6/24"))
    plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": EP})
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NID})
    assert not any(n.startswith("po") for n in plugin.link_names())


def test_start_recreates_missing_bridge_and_collects_orphans(plugin: Plugin) -> None:
    plugin.ok("NetworkDriver.CreateNetwork", NET)
    plugin.ok("NetworkDriver.CreateEndpoint", endpoint(EP, "10.70.0.5/24"))
    plugin.close()
    plugin.driver.stop()
    plugin.ns.ip("link", "del", BRIDGE)  # as after a reboot: the kernel forgot, the store did not
    plugin.ns.ip("link", "del", "poh" + EP[:12])  # this endpoint's container died meanwhile
    plugin.ns.ip("link", "add", "poh0123456789ab", "type", "veth", "peer", "name", "poc0123456789ab")
    plugin.ns.ip("link", "add", "admin0", "type", "veth", "peer", "name", "admin1")
    plugin.driver.start()
    plugin.wait_ready()
    names = plugin.link_names()
    assert BRIDGE in names and "10.70.0.1/24" in plugin.ns.run("ip", "addr", "show", BRIDGE).stdout
    assert "poh0123456789ab" not in names and "poc0123456789ab" not in names
    assert {"admin0", "admin1"} <= names, "links that do not follow our naming are never touched"
    assert not list((plugin.driver.state_dir / "store" / "endpoint").glob("*.json"))


@pytest.mark.parametrize("step", ["crash:create bridge", "crash:program firewall", "crash:add gateway"])
def test_kill9_mid_create_is_rolled_back_at_start(make_plugin: MakePlugin, step: str) -> None:
    plugin = make_plugin({"PYOVERLAY_FAIL_STEP": step})
    try:
        status = plugin.raw("NetworkDriver.CreateNetwork", (json.dumps(NET) + "\n").encode())
    except Exception:  # the process died mid-request: dockerd would see a transport error
        status = None
    assert status is None or status.status_code != 200
    plugin.close()
    plugin.driver.kill9()  # reap it: the socket closes a moment before the process is gone
    plugin.driver.extra_env.pop("PYOVERLAY_FAIL_STEP")
    plugin.driver.start()
    plugin.wait_ready()
    assert not any(n.startswith("po") for n in plugin.link_names())
    assert not list((plugin.driver.state_dir / "store").rglob("*.json"))
    assert "-A PYOVERLAY-FORWARD -i" not in plugin.iptables()
    plugin.ok("NetworkDriver.CreateNetwork", NET)  # and the same create now goes through
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NID})


@pytest.mark.parametrize(("step", "verb", "body"), [
    ("program firewall", "NetworkDriver.CreateNetwork", NET),
    ("add gateway", "NetworkDriver.CreateNetwork", NET),
])
def test_failure_half_way_rolls_back(make_plugin: MakePlugin, step: str, verb: str, body: dict[str, object]) -> None:
    plugin = make_plugin({"PYOVERLAY_FAIL_STEP": step})
    before = plugin.snapshot()
    assert "injected failure" in plugin.err(verb, body, 500)
    assert plugin.snapshot() == before


def test_failed_endpoint_leaves_no_veth(make_plugin: MakePlugin) -> None:
    plugin = make_plugin({"PYOVERLAY_FAIL_STEP": "attach"})
    plugin.ok("NetworkDriver.CreateNetwork", NET)
    before = plugin.snapshot()
    assert "injected failure" in plugin.err("NetworkDriver.CreateEndpoint", endpoint(EP, "10.70.0.5/24"), 500)
    assert plugin.snapshot() == before
    plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NID})


@pytest.mark.parametrize("step", ["crash:delete network abababababab: remove devices",
                                  "crash:delete network abababababab: forget record"])
def test_kill9_mid_delete_is_finished_at_start(make_plugin: MakePlugin, step: str) -> None:
    """dockerd's retry of the DeleteNetwork arrives with an empty body, is refused, and
    dockerd forgets the network: the restart must finish the delete, not restore it."""
    plugin = make_plugin({"PYOVERLAY_FAIL_STEP": step})
    plugin.ok("NetworkDriver.CreateNetwork", NET)
    plugin.ok("NetworkDriver.CreateEndpoint", endpoint(EP, "10.70.0.5/24"))
    with pytest.raises(Exception):  # noqa: B017 - the process died mid-request: a transport error
        plugin.raw("NetworkDriver.DeleteNetwork", (json.dumps({"NetworkID": NID}) + "\n").encode())
    plugin.close()
    plugin.driver.kill9()
    plugin.driver.extra_env.pop("PYOVERLAY_FAIL_STEP")
    plugin.driver.start()
    plugin.wait_ready()
    assert plugin.err("NetworkDriver.DeleteNetwork", None, 400)  # dockerd's empty-body retry
    assert not any(n.startswith("po") for n in plugin.link_names())
    assert not list((plugin.driver.state_dir / "store").rglob("*.json"))
    assert "-A PYOVERLAY-FORWARD -i" not in plugin.iptables()


def _bridge_net(nid: str, n: int) -> dict[str, Any]:
    return {"NetworkID": nid, "Options": {"com.docker.network.generic": {}},
            "IPv4Data": [{"AddressSpace": "PyoverlayLocal", "Gateway": f"10.72.{n}.1/24", "Pool": f"10.72.{n}.0/24"}]}


def test_objects_broken_at_start_are_reported_and_retried_until_back(make_plugin: MakePlugin) -> None:
    """Per object: a bridge name taken by a veth and a macvlan parent gone stop neither
    the other network nor the firewall; both are in status and come back by themselves
    once the cause is gone (the retry runs every --resync-interval)."""
    a, b, m = "a7" * 32, "b7" * 32, "c7" * 32
    plugin = make_plugin({"PYOVERLAY_RESYNC_INTERVAL": "1"})
    ns = plugin.ns
    ns.ip("link", "add", "eth1", "type", "veth", "peer", "name", "sw1")
    ns.set_up("eth1")
    plugin.ok("NetworkDriver.CreateNetwork", _bridge_net(a, 1))
    plugin.ok("NetworkDriver.CreateNetwork", _bridge_net(b, 2))
    plugin.ok("NetworkDriver.CreateNetwork", macvlan(m, "192.168.72.0/24", "192.168.72.1/24", parent="eth1"))
    plugin.close()
    plugin.driver.stop()
    # As after a reboot the bridges are gone; meanwhile someone took A's bridge name,
    # and the macvlan parent went away.
    ns.ip("link", "del", f"po-{a[:12]}")
    ns.ip("link", "del", f"po-{b[:12]}")
    ns.ip("link", "add", f"po-{a[:12]}", "type", "veth", "peer", "name", "blk0")
    ns.ip("link", "del", "eth1")
    plugin.driver.start()
    plugin.wait_ready()

    failures = plugin.call("Pyoverlay.Status")[1]["startup"]["failures"]
    assert sorted(failures) == [
        f"network {a[:12]}: bridge po-{a[:12]}: a veth of that name is in the way",
        f"network {m[:12]}: macvlan parent eth1 does not exist: the network's containers are cut off",
    ], failures
    # The healthy one is back, firewall included, and the veth in the way was not touched.
    assert link(plugin, f"po-{b[:12]}")["linkinfo"]["info_kind"] == "bridge"
    assert "10.72.2.1/24" in ns.run("ip", "addr", "show", f"po-{b[:12]}").stdout
    assert f"-A PYOVERLAY-FORWARD -i po-{b[:12]} -o po-{b[:12]} -j ACCEPT" in plugin.iptables()
    assert link(plugin, f"po-{a[:12]}")["linkinfo"]["info_kind"] == "veth"
    assert "10.72.1.1" not in ns.run("ip", "addr", "show", f"po-{a[:12]}").stdout

    ns.ip("link", "del", f"po-{a[:12]}")
    ns.ip("link", "add", "eth1", "type", "veth", "peer", "name", "sw1")
    ns.set_up("eth1")
    deadline = time.monotonic() + 15
    while plugin.call("Pyoverlay.Status")[1]["startup"]["failures"]:
        assert time.monotonic() < deadline, "the retry did not bring the broken objects back"
        time.sleep(0.2)
    assert link(plugin, f"po-{a[:12]}")["linkinfo"]["info_kind"] == "bridge"
    assert "10.72.1.1/24" in ns.run("ip", "addr", "show", f"po-{a[:12]}").stdout
    ep = {"NetworkID": m, "EndpointID": "d7" * 32, "Interface": {"Address": "192.168.72.5/24"}}
    plugin.ok("NetworkDriver.CreateEndpoint", ep)
    plugin.ok("NetworkDriver.DeleteEndpoint", {"NetworkID": m, "EndpointID": "d7" * 32})
