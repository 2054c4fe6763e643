"""Proves the multi-host lab alone (no pyoverlay overlay): engines, underlay, MTU, etcd, outside, a hand-built VXLAN.

The last test tears the module's lab down itself and checks that nothing is left.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Callable

import pytest

from tests.lab import (
    HostNode,
    MultiHost,
    Netns,
    build_hand_vxlan,
    fdb_map,
    links,
    neigh_map,
    netns_list,
    pids_alive,
    run,
)
from tests.lab.multihost import OUTSIDE_IP, ROUTER_IP, UNDERLAY_IF, UNDERLAY_MTU, etcd_ip
from tests.lab.proc import process_start_time

pytestmark = pytest.mark.usefixtures("host_net_before")

# ICMP payload that fills the 1400-byte underlay exactly: 1400 - 20 (IPv4) - 8 (ICMP).
MAX_PAYLOAD = UNDERLAY_MTU - 28
VXLAN_MTU = UNDERLAY_MTU - 50  # inner Ethernet 14 + VXLAN 8 + UDP 8 + outer IPv4 20


def _host_net_state() -> dict[str, str]:
    return {
        "links": run(["ip", "-o", "link", "show"]).stdout,
        "routes": run(["ip", "route", "show", "table", "all"]).stdout,
        "rules": "\n".join(ln for ln in run(["iptables-save"]).stdout.splitlines() if not ln.startswith("#")),
    }


@pytest.fixture(scope="module")
def host_net_before() -> dict[str, str]:
    """The host's own links, routes and rules before the module's lab exists (usefixtures: first)."""
    return _host_net_state()


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_lab_setup_time(multihost: MultiHost) -> None:
    print(f"multihost timings: {multihost.timings}")
    for h in multihost:
        print(f"{h.name} {h.kind}: engine {h.engine.timings}, driver {h.driver.timings if h.driver else None}")
    assert multihost.timings["total"] < 60


def test_engines_answer_with_expected_versions(multihost: MultiHost) -> None:
    assert [h.kind for h in multihost] == list(multihost.kinds)
    for h in multihost:
        version = h.cli("version", "--format", "{{.Server.Version}}").stdout.strip()
        assert version.startswith(h.kind), (h.name, version)
        assert h.engine.pid in h.netns.pids(), "dockerd runs in the host's own netns"
        assert h.cli("image", "inspect", "bb:latest").returncode == 0
        if h.driver is not None:
            assert h.driver.pid in h.netns.pids()
            started = [process_start_time(p) for p in (h.driver.pid, h.engine.pid) if p is not None]
            assert len(started) == 2 and started[0] <= started[1], "the driver starts before its engine"
            status, body = h.driver.post("Plugin.Activate")
            assert status == 200 and "NetworkDriver" in body["Implements"], body


def test_underlay_addresses_routes_and_mtu(multihost: MultiHost) -> None:
    for h in multihost:
        (ul0,) = h.netns.ip_json("-4", "addr", "show", UNDERLAY_IF)
        assert ul0["mtu"] == UNDERLAY_MTU
        assert [(a["local"], a["prefixlen"]) for a in ul0["addr_info"]] == [(h.ip, 24)]
        default = h.netns.ip_json("-4", "route", "show", "default")
        assert [(r["gateway"], r["dev"]) for r in default] == [(ROUTER_IP, UNDERLAY_IF)]
    # Every link on the underlay side (bridge and ports) carries 1400 too.
    mtus = {r["ifname"]: r["mtu"] for r in multihost.underlay.ip_json("link", "show") if r["ifname"] != "lo"}
    assert len(mtus) == 1 + len(multihost.hosts) + 3 + 1  # br0, hosts, etcd members, outside
    assert set(mtus.values()) == {UNDERLAY_MTU}, mtus


def test_hosts_ping_each_other_at_exact_underlay_mtu(multihost: MultiHost) -> None:
    for a, b in itertools.permutations(multihost.hosts, 2):
        assert a.df_ping(b.ip, 56) == 0, f"{a.name} -> {b.name}"
        assert a.df_ping(b.ip, MAX_PAYLOAD) == 0, f"{a.name} -> {b.name}: a full 1400-byte packet with DF"
        assert a.df_ping(b.ip, MAX_PAYLOAD + 1) == 2, f"{a.name} -> {b.name}: 1401 bytes must not fit"


def test_etcd_healthy_from_every_host(multihost: MultiHost) -> None:
    assert multihost.etcd.endpoints == [f"http://{etcd_ip(i)}:2379" for i in (1, 2, 3)]
    for h in multihost:
        r = multihost.etcdctl("endpoint", "health", ns=h.netns)
        assert r.stdout.count("is healthy") + r.stderr.count("is healthy") == 3, (h.name, r.stdout, r.stderr)
    first, last = multihost.hosts[0], multihost.hosts[-1]
    multihost.etcdctl("put", "/po-lab/smoke", first.name, ns=first.netns)
    got = multihost.etcdctl("get", "--print-value-only", "/po-lab/smoke", ns=last.netns).stdout.strip()
    assert got == first.name
    multihost.etcdctl("del", "/po-lab/smoke", ns=last.netns)


def test_outside_reachable_and_routes_nowhere(multihost: MultiHost) -> None:
    for h in multihost:
        assert h.df_ping(OUTSIDE_IP, 56) == 0, h.name
    routes = multihost.outside.ip_json("-4", "route", "show")
    assert [r["dst"] for r in routes] == ["10.99.0.0/24"], "the outside host has no route beyond the underlay"
    for ns in (multihost.outside, multihost.underlay):
        assert ns.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0", ns.name
    # A host's default route ends in the underlay netns, which forwards nothing.
    assert multihost.hosts[0].df_ping("192.0.2.1", 56, timeout=0.5) == 1


def test_containers_reach_outside_and_publish_to_it(clean_multihost: MultiHost) -> None:
    """Docker's own bridge network (no pyoverlay): egress is masqueraded to ul0, `-p` answers the outside host."""
    for h in clean_multihost:
        web = f"echo {h.name} >/tmp/index.html; exec httpd -f -p 8000 -h /tmp"
        h.run_container("eg", "-p", "8080:8000", cmd=("sh", "-c", web))
        assert h.ping("eg", OUTSIDE_IP, count=1, timeout=2), h.name
        assert _http_get(clean_multihost.outside, f"http://{h.ip}:8080/").strip() == h.name


def _http_get(ns: Netns, url: str) -> str:
    # busybox 1.35's static wget segfaults on this machine: fetch with Python instead.
    script = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    return ns.run(sys.executable, "-c", script, url).stdout


def _vxlan_sockets(h: HostNode) -> str:
    return h.netns.run("ss", "-Huln", "sport", "= :4789").stdout


def test_hand_built_vxlan_carries_ping_at_1350(multihost: MultiHost) -> None:
    h1, h2 = multihost["h1"], multihost["h2"]
    with build_hand_vxlan(multihost.lab, [(h1.netns, h1.ip), (h2.netns, h2.ip)]) as hv:
        a, b = hv.ends
        assert ":4789" in _vxlan_sockets(h1), "the vxlan socket lives in the VTEP (host) netns"
        assert hv.ping(0, 1) == 0 and hv.ping(1, 0) == 0
        assert hv.ping(0, 1, size=VXLAN_MTU - 28) == 0, "1350-byte inner packets fit the 1400 underlay"
        assert hv.ping(0, 1, size=VXLAN_MTU - 27) == 2, "the containers' MTU is 1350"
        info = json.loads(a.sandbox.run("ip", "-d", "-s", "-j", "link", "show", hv.device).stdout)[0]
        vx = info["linkinfo"]["info_data"]
        assert (vx["id"], vx["port"], vx["learning"], vx["proxy"]) == (4242, 4789, False, True)
        assert info["mtu"] == VXLAN_MTU and info["stats64"]["tx"]["packets"] > 0
        assert fdb_map(a.sandbox, hv.device) == {b.mac: h2.ip}
        assert neigh_map(a.sandbox, hv.device) == {b.ip: b.mac}
        names = [ns.name for e in hv.ends for ns in (e.sandbox, e.container)]
    assert set(names).isdisjoint(netns_list(multihost.lab.ns_name(""))), "its namespaces are gone"
    for h in (h1, h2):
        assert hv.device not in [ln.name for ln in links(h.netns)]
        assert _vxlan_sockets(h) == "", h.name


def test_failure_helpers(multihost: MultiHost) -> None:
    h1, h3 = multihost["h1"], multihost["h3"]
    for silent in (False, True):
        h3.cut(silent=silent)
        assert h1.df_ping(h3.ip, 56, timeout=0.5) == 1, f"cut(silent={silent})"
        carrier = "NO-CARRIER" in h3.netns.ip("link", "show", UNDERLAY_IF).stdout
        assert carrier is not silent, "a silent cut keeps the host's link up"
        h3.reconnect()
        assert _eventually(lambda: h1.df_ping(h3.ip, 56, timeout=0.5) == 0), f"reconnect after silent={silent}"
    if h3.driver is not None:
        old = h3.driver.pid
        h3.kill_driver()
        assert not h3.driver.running and pids_alive([old] if old else []) == []
        h3.restart_driver()
        assert h3.driver.running and h3.driver.post("Plugin.Activate")[0] == 200
    h3.stop_engine()
    assert not h3.engine.running
    h3.start_engine()
    assert h3.cli("version", "--format", "{{.Server.Version}}").stdout.startswith(h3.kind)


def test_teardown_leaves_nothing(multihost: MultiHost, host_net_before: dict[str, str]) -> None:
    """Runs last: tears the module's lab down (the fixture's teardown is then a no-op)."""
    pids = multihost.lab.recorded_pids()
    etcd_pids = multihost.lab.etcd_pids()
    assert len(pids_alive(etcd_pids)) == 3
    assert len(pids_alive(pids)) >= 2 * len(multihost.hosts) + 3  # dockerd + containerd per host, etcd
    t0 = time.monotonic()
    assert multihost.teardown() == []
    print(f"multihost teardown {time.monotonic() - t0:.2f}s")
    assert multihost.leftovers() == {"netns": [], "mounts": [], "pids": [], "cgroups": []}
    assert pids_alive(etcd_pids) == []
    assert not multihost.lab.dir.exists()
    assert _host_net_state() == host_net_before
