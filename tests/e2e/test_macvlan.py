"""Macvlan end to end: containers as hosts on a LAN (router .1, LAN host .10).

The parent is the engine's `lan0`, a veth whose peer is a port of the LAN's bridge in
another namespace; nothing leaves the lab.
"""

from __future__ import annotations

import pytest

from tests.lab import DriverProcess, Engine, Lan, links

SUBNET = "198.51.100.0/24"
RANGE = "198.51.100.128/25"


def create(e: Engine, lan: Lan, name: str, *opts: str) -> None:
    e.cli("network", "create", "-d", "pyoverlay", "-o", "mode=macvlan", "-o", f"parent={lan.parent_if}",
          "--subnet", SUBNET, "--ip-range", RANGE, "--gateway", lan.router_ip, *opts, name)


def run(e: Engine, name: str, network: str, *args: str) -> None:
    e.cli("run", "-d", "--name", name, "--network", network, *args, "bb", "sleep", "3600")


def pings(e: Engine, container: str, target: str) -> bool:
    return e.cli("exec", container, "ping", "-c1", "-W2", target, check=False).returncode == 0


def test_containers_are_hosts_on_the_lan(clean_engine: Engine, lan: Lan, engine_kind: str) -> None:
    e = clean_engine
    create(e, lan, "lan")
    client = "20.10" if engine_kind == "20.10" else "28"
    e.cli("run", "-d", "--name", "m1", "--network", "lan", "--mac-address", "02:aa:bb:cc:dd:01",
          "bb", "sleep", "3600", client=client)
    run(e, "m2", "lan")
    assert pings(e, "m1", "m2") and pings(e, "m2", "m1")
    assert pings(e, "m1", lan.router_ip) and pings(e, "m1", lan.host_ip)
    assert f"default via {lan.router_ip} dev eth0" in e.cli("exec", "m1", "ip", "route").stdout
    assert "02:aa:bb:cc:dd:01" in e.cli("exec", "m1", "ip", "link", "show", "eth0").stdout
    m2 = e.cli("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", "m2").stdout.strip()
    ok = lan.host_ns.run("busybox", "ping", "-c1", "-W2", m2, check=False)
    assert ok.returncode == 0, "the LAN reaches the container directly"
    assert lan.router_ip not in e.netns.run("ip", "addr").stdout, "the gateway is not assigned on the host"


def test_private_mode(clean_engine: Engine, lan: Lan) -> None:
    e = clean_engine
    create(e, lan, "priv", "-o", "macvlan_mode=private")
    run(e, "p1", "priv")
    run(e, "p2", "priv")
    assert not pings(e, "p1", "p2")
    assert pings(e, "p1", lan.router_ip), "the LAN is still reachable"


def test_passthru_single_endpoint(clean_engine: Engine, lan: Lan) -> None:
    e = clean_engine
    create(e, lan, "pass", "-o", "macvlan_mode=passthru")
    run(e, "t1", "pass")
    assert pings(e, "t1", lan.router_ip)
    second = e.cli("run", "-d", "--name", "t2", "--network", "pass", "bb", "sleep", "60", check=False)
    assert second.returncode != 0 and "passthru allows a single endpoint" in second.stderr


def test_mtu_and_driver_restart(clean_engine: Engine, lan: Lan, driver: DriverProcess) -> None:
    e = clean_engine
    create(e, lan, "small", "-o", "com.docker.network.driver.mtu=1400")
    run(e, "s1", "small")
    assert "mtu 1400" in e.cli("exec", "s1", "ip", "link", "show", "eth0").stdout
    driver.kill9()
    driver.start()
    assert pings(e, "s1", lan.host_ip)
    run(e, "s2", "small")
    assert pings(e, "s2", "s1")
    e.cli("rm", "-f", "s1", "s2")
    e.cli("network", "rm", "small")
    assert not [ln.name for ln in links(e.netns) if ln.name.startswith("po")]
    assert lan.parent_if in [ln.name for ln in links(e.netns)], "the parent is never deleted"


@pytest.mark.parametrize(("opts", "message"), [
    (["-o", "parent=nosuch0"], "host interface nosuch0 does not exist"),
    (["-o", "parent=lan0.10"], "802.1Q"),
    (["-o", "parent=lan0", "-o", "macvlan_mode=shared"], "unknown mode 'shared'"),
])
def test_refusals(clean_engine: Engine, opts: list[str], message: str) -> None:
    e = clean_engine
    if "802.1Q" in message and e.netns.ip("link", "add", "link", "lan0", "name", "lan0.9", "type", "vlan", "id", "9",
                                         check=False).returncode == 0:
        e.netns.ip("link", "del", "lan0.9")
        pytest.skip("this kernel has 802.1Q support: the VLAN error path cannot be reached")
    r = e.cli("network", "create", "-d", "pyoverlay", "-o", "mode=macvlan", *opts, "--subnet", "192.0.2.0/24", "x",
              check=False)
    assert r.returncode != 0 and message in r.stderr
