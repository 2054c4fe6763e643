"""Overlay networks across three Docker hosts (20.10, 28.5, 20.10) with a 3-member etcd cluster.

One lab for the module (tests/lab/multihost.py): underlay 10.99.0.0/24 with MTU 1400,
hosts h1-h3 at .11-.13, etcd at .21-.23, an "outside" host at .100 standing in for the
internet. Every host runs pyoverlay with ``--store etcd --host-ttl 10``. The module's
``app`` overlay (10.60.0.0/16) has one container per host; tests that break something
(a driver, a host, etcd) put it back before they return, so later tests start from a
working cluster. Every negative check follows the positive control showing the path works.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.helpers import Servers, ask
from tests.lab.multihost import OUTSIDE_IP, HostNode, MultiHost, overlay_driver_args

RESYNC = 3  # seconds; the default is 30, which would only make the repair test slow
FORGET = 12  # --forget-host-after: longer than any host here is without its record, but a dead one
# Short, to keep the dead-host test quick, but longer than a driver restart on a loaded
# 2-core machine (imports alone took 5 s there): a restart inside the TTL disturbs nothing.
TTL = 10
pytestmark = pytest.mark.multihost(
    driver_args=functools.partial(overlay_driver_args, host_ttl=TTL,
                                  extra=("--resync-interval", str(RESYNC), "--forget-host-after", str(FORGET)))
)

OVERLAY = ("-d", "pyoverlay", "--ipam-driver", "pyoverlay", "-o", "mode=overlay")


def create(h: HostNode, net: str, overlay: str, *args: str) -> subprocess.CompletedProcess[str]:
    return h.cli("network", "create", *OVERLAY, "-o", f"overlay={overlay}", *args, net, check=False)


def net_id(h: HostNode, net: str) -> str:
    return h.cli("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()


def vxlan(h: HostNode, net: str) -> str:
    return f"pov{net_id(h, net)[:12]}"


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 10.0) -> float:
    """Poll ``cond`` until true; the seconds it took (fails the test after ``timeout``)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.05)
    return time.monotonic() - t0


def keys(mh: MultiHost, prefix: str = "/pyoverlay/") -> list[str]:
    out = mh.etcdctl("get", "--prefix", prefix, "--keys-only").stdout
    return sorted(k for k in out.split() if k)


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def app(multihost: MultiHost) -> MultiHost:
    """Overlay ``app`` on every host, container ``cN`` on host hN, all peers programmed."""
    for h in multihost:
        r = create(h, "app", "app", "--subnet", "10.60.0.0/16")
        assert r.returncode == 0, r.stderr
    for h in multihost:
        h.run_container(f"c{h.index}", "--network", "app")
    for h in multihost:
        others = {o.container_mac(f"c{o.index}") for o in multihost if o is not h}
        wait_for(f"{h.name} programs the others", lambda h=h, o=others: o <= set(h.fdb(vxlan(h, "app"))))
    return multihost


def ip_of(h: HostNode, container: str, net: str = "app") -> str:
    return h.container_ip(container, net)


# ----------------------------------------------------------------- data plane
def test_every_host_reaches_every_other(app: MultiHost) -> None:
    for a in app:
        for b in app:
            if a is not b:
                assert a.ping(f"c{a.index}", ip_of(b, f"c{b.index}")), f"{a.name} -> {b.name}"


def test_entries_are_static_and_point_at_the_vtep(app: MultiHost) -> None:
    h1, h2 = app[0], app[1]
    dev = vxlan(h1, "app")
    details = h1.link(dev)["linkinfo"]["info_data"]
    assert (details["port"], details["local"], details.get("learning", False), details["proxy"]) == (
        4789, h1.ip, False, True
    )
    mac2, ip2 = h2.container_mac("c2"), ip_of(h2, "c2")
    assert h1.fdb(dev)[mac2] == h2.ip
    assert h1.neigh(dev)[ip2] == mac2
    # no all-zero (flooding) row: broadcasts stay on their host
    assert "00:00:00:00:00:00" not in h1.fdb(dev)


def test_mtu_is_the_underlays_minus_50_and_bulk_crosses_unfragmented(app: MultiHost) -> None:
    h1, h2 = app[0], app[1]
    assert h1.container_iface("c1")["mtu"] == h2.container_iface("c2")["mtu"] == 1400 - 50
    ip2 = ip_of(h2, "c2")
    assert h1.df_ping_from("c1", ip2, 1350 - 28) == 0  # a full-size packet crosses whole
    assert h1.df_ping_from("c1", ip2, 1350 - 27) == 2  # one byte more does not fit
    frags = _frag_creates(h1)
    sent, received = _bulk(h1, "c1", h2, "c2", 32 << 20)
    assert received == sent
    assert _frag_creates(h1) == frags, "the outer packets were fragmented"


def _frag_creates(h: HostNode) -> int:
    text = h.netns.run("cat", "/proc/net/snmp").stdout.splitlines()
    names, values = [line.split() for line in text if line.startswith("Ip:")][:2]
    return int(values[names.index("FragCreates")])


_RECEIVER = (
    "import socket,sys\ns=socket.socket();s.bind(('0.0.0.0',5001));s.listen(1);print('ready',flush=True)\n"
    "c,_=s.accept();n=0\nwhile True:\n d=c.recv(1<<16)\n if not d: break\n n+=len(d)\nprint(n)"
)
_SENDER = "import socket,sys\ns=socket.create_connection((sys.argv[1],5001));b=b'x'*(1<<16)\n" \
    "for _ in range(int(sys.argv[2])>>16): s.sendall(b)\ns.close()"  # fmt: skip


def _bulk(src: HostNode, a: str, dst: HostNode, b: str, size: int) -> tuple[int, int]:
    """Send ``size`` bytes over TCP from container ``a`` to ``b``; (sent, received)."""
    rx = subprocess.Popen(["nsenter", f"--net={dst.engine.container_netns(b)}", sys.executable, "-c", _RECEIVER],
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        subprocess.run(["nsenter", f"--net={src.engine.container_netns(a)}", sys.executable, "-c", _SENDER,
                        ip_of(dst, b), str(size)], check=True, timeout=120)  # fmt: skip
        return size, int(rx.stdout.readline())
    finally:
        rx.kill()
        rx.wait(10)


def test_egress_leaves_through_the_containers_own_host(app: MultiHost, servers: Servers) -> None:
    servers.start(str(app.outside.path), "tcp", 7000, "out")
    for h in app:
        # the outside host has no route to 10.60/16: only a masqueraded packet gets an answer
        assert ask(h.engine.container_netns(f"c{h.index}"), "tcp", OUTSIDE_IP, 7000) == f"out saw {h.ip}"


def test_published_port_works_on_the_host_where_the_container_runs(app: MultiHost, servers: Servers) -> None:
    h2 = app[1]
    h2.run_container("pub", "--network", "app", "-p", "8080:80")
    try:
        servers.start(h2.engine.container_netns("pub"), "tcp", 80, "web")
        out = str(app.outside.path)
        assert ask(out, "tcp", h2.ip, 8080) == f"web saw {OUTSIDE_IP}"
        assert ask(out, "tcp", app[0].ip, 8080) is None, "published on h2 only"
    finally:
        h2.cli("rm", "-f", "pub")


def test_addresses_are_unique_across_hosts_and_the_gateway_is_shared(app: MultiHost) -> None:
    names = [(h, f"u{h.index}{i}") for h in app for i in range(4)]
    with ThreadPoolExecutor(len(names)) as pool:  # all hosts allocate at once
        list(pool.map(lambda hn: hn[0].run_container(hn[1], "--network", "app"), names))
    try:
        ips = [ip_of(h, n) for h, n in names] + [ip_of(h, f"c{h.index}") for h in app]
        assert len(set(ips)) == len(ips), ips
        routes = {h.exec(f"c{h.index}", "ip", "route").split("\n")[0] for h in app}
        assert routes == {"default via 10.60.0.1 dev eth0 "}, routes
        macs = {h.link(f"po-{net_id(h, 'app')[:12]}")["address"] for h in app}
        assert len(macs) == 1, f"the gateway MAC differs between hosts: {macs}"
    finally:
        for h, n in names:
            h.cli("rm", "-f", n, check=False)


def test_a_static_address_is_held_cluster_wide(app: MultiHost) -> None:
    h1, h2 = app[0], app[1]
    taken = ip_of(h1, "c1")
    clash = h2.cli("run", "-d", "--name", "s2", "--network", "app", "--ip", taken, "bb", "sleep", "60", check=False)
    assert clash.returncode != 0 and f"{taken} is already allocated" in clash.stderr, clash.stderr
    h2.cli("rm", "-f", "s2", check=False)
    h2.run_container("s2", "--network", "app", "--ip", "10.60.200.7")
    try:
        again = h1.cli("run", "-d", "--name", "s1", "--network", "app", "--ip", "10.60.200.7", "bb", "true",
                       check=False)  # fmt: skip
        assert again.returncode != 0 and "already allocated" in again.stderr
        assert h1.ping("c1", "10.60.200.7")
    finally:
        h1.cli("rm", "-f", "s1", check=False)
        h2.cli("rm", "-f", "s2")
    # released on h2, it can be had on h1
    h1.run_container("s1", "--network", "app", "--ip", "10.60.200.7")
    h1.cli("rm", "-f", "s1")


# ----------------------------------------------------------------- identity and refusals
def test_mismatched_settings_are_refused_naming_the_clusters_value(app: MultiHost) -> None:
    h1, h2 = app[0], app[1]
    assert create(h1, "mm", "mm", "--subnet", "10.62.0.0/16").returncode == 0
    try:
        before = keys(app, "/pyoverlay/overlays/mm")
        refusals = {
            ("--subnet", "10.63.0.0/16"): "--subnet 10.63.0.0/16 differs from the cluster's 10.62.0.0/16",
            ("--subnet", "10.62.0.0/16", "-o", "vni=999"): "option vni 999 differs from the cluster's VNI",
            ("--subnet", "10.62.0.0/16", "-o", "com.docker.network.driver.mtu=1300"):
                "MTU 1300 differs from the cluster's MTU 1350",
            ("--subnet", "10.62.0.0/16", "--internal"): "--internal true differs from the cluster's false",
        }  # fmt: skip
        for args, why in refusals.items():
            r = create(h2, "mm", "mm", *args)
            assert r.returncode != 0 and why in r.stderr, (args, r.stderr)
        r = create(h2, "other", "other", "--subnet", "10.62.0.0/16")
        assert r.returncode != 0 and "already used by overlay mm" in r.stderr, r.stderr
        r = h2.cli("network", "create", "-d", "pyoverlay", "-o", "mode=overlay", "-o", "overlay=mm",
                   "--subnet", "10.62.0.0/16", "noipam", check=False)  # fmt: skip
        assert r.returncode != 0 and "--ipam-driver pyoverlay" in r.stderr, r.stderr
        for bad, why in (("vni=0", "out of range"), ("overlay=a/b", "not a valid overlay name")):
            r = h2.cli("network", "create", *OVERLAY, "-o", bad, "--subnet", "10.65.0.0/16", "bad", check=False)
            assert r.returncode != 0 and why in r.stderr, r.stderr
        # nothing changed: h2 holds none of these networks, the cluster still knows only h1
        names = h2.cli("network", "ls", "--format", "{{.Name}}").stdout.split()
        assert not {"mm", "other", "noipam", "bad"} & set(names)
        assert keys(app, "/pyoverlay/overlays/mm") == before
        assert not keys(app, "/pyoverlay/overlays/other")
        record = json.loads(app.etcdctl("get", "/pyoverlay/overlays/mm", "--print-value-only").stdout)
        assert len(record["members"]) == 1
    finally:
        h1.cli("network", "rm", "mm")
    wait_for("mm is freed", lambda: not keys(app, "/pyoverlay/overlays/mm"))
    assert not keys(app, "/pyoverlay/subnets/10.62.0.0_16")
    # no host brings back an overlay it was refused, once the clash is gone (a full pass later)
    time.sleep(RESYNC + 1)
    assert not keys(app, "/pyoverlay/overlays/other") and not keys(app, "/pyoverlay/overlays/mm")


@contextlib.contextmanager
def overlay_on(hosts: Sequence[HostNode], net: str, *args: str) -> Iterator[None]:
    """Overlay ``net`` (also its cluster name) on ``hosts``, a container ``<net><index>`` on
    each; both removed afterwards, whatever the test did."""
    try:
        for h in hosts:
            r = create(h, net, net, *args)
            assert r.returncode == 0, r.stderr
        for h in hosts:
            h.run_container(f"{net}{h.index}", "--network", net)
        yield
    finally:
        for h in hosts:
            h.cli("rm", "-f", f"{net}{h.index}", check=False)
            h.cli("network", "rm", net, check=False)


def test_two_overlays_are_isolated(app: MultiHost) -> None:
    h1, h2 = app[0], app[1]
    with overlay_on((h1, h2), "b", "--subnet", "10.61.0.0/16"):
        b1 = ip_of(h1, "b1", "b")
        assert h2.ping("b2", b1), "control: b1 is reachable on its own overlay"
        assert vxlan(h1, "b") != vxlan(h1, "app")
        assert not h2.ping("c2", b1), "from app on another host"
        assert not h1.ping("c1", b1), "from app on the same host"


def test_icc_false_holds_across_hosts(app: MultiHost) -> None:
    h1, h2 = app[0], app[1]
    with overlay_on((h1, h2), "q", "-o", "com.docker.network.bridge.enable_icc=false", "--subnet", "10.68.0.0/16"):
        q2 = ip_of(h2, "q2", "q")
        wait_for("h1 programs q2", lambda: h2.container_mac("q2") in h1.fdb(vxlan(h1, "q")))
        assert h1.ping("q1", "10.68.0.1"), "control: q1 reaches its gateway"
        assert h1.ping("c1", ip_of(h2, "c2")), "control: the same two hosts talk on an icc=true overlay"
        assert not h1.ping("q1", q2)


def test_internal_overlay_has_no_way_out(app: MultiHost) -> None:
    h1, h2 = app[0], app[1]
    with overlay_on((h1, h2), "in", "--internal", "--subnet", "10.66.0.0/16"):
        assert h1.ping("in1", ip_of(h2, "in2", "in")), "control: across hosts inside the overlay"
        assert h1.ping("c1", OUTSIDE_IP), "control: the outside answers"
        assert not h1.ping("in1", OUTSIDE_IP)


def test_dual_stack_overlay(app: MultiHost) -> None:
    h1, h3 = app[0], app[2]
    with overlay_on((h1, h3), "ds", "--ipv6", "--subnet", "10.64.0.0/16", "--subnet", "fd64::/64"):
        v6 = json.loads(h1.cli("inspect", "-f", "{{json .NetworkSettings.Networks.ds}}", "ds1").stdout)
        six = v6["GlobalIPv6Address"]
        assert six.startswith("fd64::")
        wait_for("h3 has ds1's IPv6 neighbour", lambda: six in h3.neigh(vxlan(h3, "ds")))
        assert h3.engine.cli("exec", "ds3", "ping", "-6", "-c1", "-W2", six, check=False).returncode == 0
        assert h3.ping("ds3", ip_of(h1, "ds1", "ds"))


# ----------------------------------------------------------------- membership and convergence
def test_endpoints_converge_on_every_host_and_leave_likewise(app: MultiHost) -> None:
    h1, others = app[0], [app[1], app[2]]
    t0 = time.monotonic()
    h1.run_container("conv", "--network", "app")
    mac = h1.container_mac("conv")
    for h in others:
        wait_for(f"{h.name} programs conv", lambda h=h: mac in h.fdb(vxlan(h, "app")), timeout=5)
    added = time.monotonic() - t0
    t1 = time.monotonic()
    h1.cli("rm", "-f", "conv")
    for h in others:
        wait_for(f"{h.name} forgets conv", lambda h=h: mac not in h.fdb(vxlan(h, "app")), timeout=5)
    print(f"convergence (docker run returned → programmed on both peers): {added:.2f}s; "
          f"removal: {time.monotonic() - t1:.2f}s")  # fmt: skip


def test_periodic_resync_repairs_entries_changed_behind_its_back(app: MultiHost) -> None:
    h1, h2 = app[0], app[1]
    dev = vxlan(h2, "app")
    mac1, ip1 = h1.container_mac("c1"), ip_of(h1, "c1")
    # Each command fails (and the test with it) unless it changed what it names; no read
    # back here: the resync, every 3 s, may already have repaired it (it raced a loaded run).
    h2.netns.run("bridge", "fdb", "del", mac1, "dev", dev, "self")
    h2.netns.ip("neigh", "del", ip1, "dev", dev)
    h2.netns.run("bridge", "fdb", "add", "02:42:0a:3c:ff:ff", "dev", dev, "dst", "10.99.0.99", "self", "permanent")
    wait_for("the missing entries are back", lambda: h2.fdb(dev).get(mac1) == h1.ip and ip1 in h2.neigh(dev),
             timeout=RESYNC + 5)  # fmt: skip
    wait_for("the stray entry is gone", lambda: "02:42:0a:3c:ff:ff" not in h2.fdb(dev), timeout=RESYNC + 5)
    assert h2.ping("c2", ip1)


def test_driver_killed_and_restarted_keeps_traffic_and_reconciles(app: MultiHost) -> None:
    h1, h2, h3 = app[0], app[1], app[2]
    dev2 = vxlan(h2, "app")
    h3.run_container("gone", "--network", "app")
    gone = h3.container_mac("gone")
    wait_for("h2 programs gone", lambda: gone in h2.fdb(dev2))
    ping = _Ping(h1, "c1", ip_of(h2, "c2"))
    h2.kill_driver()
    h3.cli("rm", "-f", "gone")  # while h2's driver is down: it must notice when it is back
    h2.start_driver()
    h1.run_container("late", "--network", "app")
    late = h1.container_mac("late")
    try:
        wait_for("h2 programs late", lambda: late in h2.fdb(dev2))
        wait_for("h2 forgets gone", lambda: gone not in h2.fdb(dev2))
        assert h2.container_mac("c2") in h1.fdb(vxlan(h1, "app")), "h2's own endpoint is still published"
        sent, got = ping.result()
        assert got == sent, f"established traffic was disturbed: {got}/{sent} replies"
    finally:
        h1.cli("rm", "-f", "late")


class _Ping:
    """busybox ping from a container's netns, in the background: (sent, received) at the end."""

    def __init__(self, h: HostNode, container: str, ip: str, count: int = 40) -> None:
        self.count = count
        argv = ["nsenter", f"--net={h.engine.container_netns(container)}", "/bin/busybox", "ping",
                "-c", str(count), "-i", "0.1", "-W", "1", ip]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def result(self) -> tuple[int, int]:
        out, _ = self.proc.communicate(timeout=60)
        line = next(x for x in out.splitlines() if "packets received" in x)
        return self.count, int(line.split(",")[1].split()[0])


def test_a_dead_hosts_endpoints_leave_within_its_ttl_and_its_addresses_later(app: MultiHost) -> None:
    h1, h2, h3 = app[0], app[1], app[2]
    mac3, ip3, host3 = h3.container_mac("c3"), ip_of(h3, "c3"), _host_id(h3)
    assert all(mac3 in h.fdb(vxlan(h, "app")) for h in (h1, h2))
    h3.cut(silent=True)  # gone: no goodbye, its lease just stops being renewed
    try:
        took = max(wait_for(f"{h.name} drops h3", lambda h=h: mac3 not in h.fdb(vxlan(h, "app")), timeout=TTL + 6)
                   for h in (h1, h2))  # fmt: skip
        print(f"dead host's endpoints removed after {took:.1f}s (TTL {TTL}s)")
        assert h1.ping("c1", ip_of(h2, "c2")), "the others keep talking"
        # Gone for --forget-host-after: the others drop it from the overlay, and its
        # address claims go back to the pool.
        assert ip3 in claims_of(app, h3)
        wait_for("h3 forgotten", lambda: host3 not in _members(app, "app"), timeout=FORGET + RESYNC + 5)
        assert claims_of(app, h3) == set()
    finally:
        h3.reconnect()
    # back: it takes a new lease, joins again, claims what it holds and publishes its endpoints
    for h in (h1, h2):
        wait_for(f"{h.name} has h3 again", lambda h=h: mac3 in h.fdb(vxlan(h, "app")), timeout=TTL + 10)
    wait_for("h3 a member again, holding its address", lambda: host3 in _members(app, "app")
             and ip3 in claims_of(app, h3), timeout=2 * RESYNC + 10)  # fmt: skip
    assert h1.ping("c1", ip_of(h3, "c3"))


def _host_id(h: HostNode) -> str:
    assert h.driver is not None
    return (h.driver.state_dir / "host-id").read_text().strip()


def _members(app: MultiHost, overlay: str) -> list[str]:
    out = app.etcdctl("get", f"/pyoverlay/overlays/{overlay}", "--print-value-only").stdout.strip()
    return list(json.loads(out)["members"]) if out else []


def _claims(app: MultiHost, overlay: str) -> dict[str, str]:
    """Address → claiming host ID, in every pool of ``overlay``, as etcd has them."""
    out = app.etcdctl("get", "--prefix", f"/pyoverlay/ipam/{overlay}/").stdout.splitlines()
    return {k.rsplit("/", 1)[1]: json.loads(v)["host"] for k, v in zip(out[0::2], out[1::2], strict=False)
            if "/addrs/" in k}  # fmt: skip


def claims_of(app: MultiHost, h: HostNode) -> set[str]:
    """The addresses ``h`` claims in the app overlay."""
    host = _host_id(h)
    return {ip for ip, holder in _claims(app, "app").items() if holder == host}


# ----------------------------------------------------------------- etcd trouble
def test_one_etcd_member_down_is_no_outage(app: MultiHost) -> None:
    h1, h2 = app[0], app[1]
    leader = app.etcd.leader()
    assert leader is not None
    app.etcd.kill(leader)
    try:
        t0 = time.monotonic()
        h1.run_container("m1", "--network", "app")
        started = time.monotonic() - t0
        mac = h1.container_mac("m1")
        wait_for("h2 programs m1", lambda: mac in h2.fdb(vxlan(h2, "app")), timeout=10)
        assert h2.ping("c2", ip_of(h1, "m1"))
        print(f"docker run with the etcd leader killed: {started:.2f}s")
    finally:
        h1.cli("rm", "-f", "m1", check=False)
        app.etcd.start(leader)


def test_all_of_etcd_down_then_back(app: MultiHost) -> None:
    h1, h2 = app[0], app[1]
    h2.run_container("t2", "--network", "app")
    t2 = h2.container_mac("t2")
    wait_for("h1 programs t2", lambda: t2 in h1.fdb(vxlan(h1, "app")))
    for i in range(len(app.etcd.members)):
        app.etcd.stop(i)
    try:
        assert h1.ping("c1", ip_of(h2, "c2")), "running containers keep talking"
        t0 = time.monotonic()
        r = h1.cli("run", "-d", "--name", "x1", "--network", "app", "bb", "sleep", "60", check=False, timeout=120)
        failed_after = time.monotonic() - t0
        assert r.returncode != 0 and "etcd" in r.stderr, r.stderr
        assert failed_after < 15, f"a call that needs the cluster took {failed_after:.1f}s to fail"
        h1.cli("rm", "-f", "x1", check=False)
        # bridge networks do not care
        h1.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.70.0.0/24", "br")
        h1.run_container("br1", "--network", "br")
        assert h1.ping("br1", "10.70.0.1")
        h2.cli("rm", "-f", "t2")  # removed during the outage: etcd must hear of it later
    finally:
        h1.cli("rm", "-f", "br1", check=False)
        h1.cli("network", "rm", "br", check=False)
        for i in range(len(app.etcd.members)):
            app.etcd.start(i, wait=False)
        app.etcd.wait_healthy()
    wait_for("h1 forgets t2 once etcd is back", lambda: t2 not in h1.fdb(vxlan(h1, "app")), timeout=30)
    h1.run_container("after", "--network", "app")
    try:
        mac = h1.container_mac("after")
        wait_for("h2 programs a new container", lambda: mac in h2.fdb(vxlan(h2, "app")), timeout=15)
        assert h2.ping("c2", ip_of(h1, "after"))
    finally:
        h1.cli("rm", "-f", "after")


def test_etcd_losing_all_its_data_is_repaired_by_the_hosts(app: MultiHost) -> None:
    h1, h2 = app[0], app[1]
    before = json.loads(app.etcdctl("get", "/pyoverlay/overlays/app", "--print-value-only").stdout)
    held = {ip_of(h, f"c{h.index}") for h in app}
    app.etcdctl("del", "--prefix", "/pyoverlay/")  # a restore from nothing, say
    # each host notices at its next full pass (--resync-interval) and writes back what it has
    def repaired() -> bool:
        out = app.etcdctl("get", "/pyoverlay/overlays/app", "--print-value-only", check=False).stdout
        return bool(out.strip()) and len(json.loads(out)["members"]) == len(app.hosts)
    wait_for("the overlay is back with every host", repaired, timeout=RESYNC * 4 + 10)
    after = json.loads(app.etcdctl("get", "/pyoverlay/overlays/app", "--print-value-only").stdout)
    assert (after["vni"], after["mtu"], after["gateway_mac"]) == (before["vni"], before["mtu"], before["gateway_mac"])
    wait_for("the hosts' addresses are claimed again", lambda: held <= {
        k.rsplit("/", 1)[1] for k in keys(app, "/pyoverlay/ipam/app/")}, timeout=RESYNC * 4 + 10)  # fmt: skip
    for h in app:
        others = {o.container_mac(f"c{o.index}") for o in app if o is not h}
        wait_for(f"{h.name} has its peers again", lambda h=h, o=others: o <= set(h.fdb(vxlan(h, "app"))),
                 timeout=RESYNC * 4 + 10)  # fmt: skip
    assert h1.ping("c1", ip_of(h2, "c2"))
    h2.run_container("fresh", "--network", "app")
    try:
        assert ip_of(h2, "fresh") not in held, "an address in use was handed out again"
    finally:
        h2.cli("rm", "-f", "fresh")


# ----------------------------------------------------------------- the end
BURST = 15  # per host, on two hosts at once


def test_a_burst_on_two_hosts_with_one_driver_killed_midway(app: MultiHost) -> None:
    """15 ``docker run`` at once on each of two hosts, one host's driver killed 1 s in and
    restarted: every running container has a unique address, reaches the other host,
    and etcd's claims are exactly the running containers' (after the Docker GC's grace
    for what a cut-short RequestAddress left); then ``rm -f`` of all of them at once."""
    h1, h2 = app[0], app[1]
    gc = {"PYOVERLAY_GC_INTERVAL": "1"}
    jobs = [(h, f"ob{h.index}x{i}") for i in range(BURST) for h in (h1, h2)]
    for h in (h1, h2):
        assert h.driver is not None
        h.driver.extra_env.update(gc | {"PYOVERLAY_DOCKER_HOST": h.engine.host_url})
        h.restart_driver()
    try:
        for h in (h1, h2):
            assert create(h, "burst", "burst", "--subnet", "10.62.0.0/24").returncode == 0

        def start(h: HostNode, name: str) -> bool:
            r = h.cli("run", "-d", "--name", name, "--network", "burst", "bb", "sleep", "3600", check=False,
                      timeout=120)  # fmt: skip
            if r.returncode != 0:
                h.cli("rm", "-f", name, check=False)
            return r.returncode == 0

        assert h2.driver is not None
        killer = threading.Timer(1.0, lambda: (h2.kill_driver(), time.sleep(0.5), h2.start_driver()))
        killer.start()
        with ThreadPoolExecutor(12) as pool:
            started = list(pool.map(lambda j: start(*j), jobs))
        killer.join()
        assert sum(started) >= BURST, f"control: most starts go through ({sum(started)}/{2 * BURST})"
        print(f"overlay burst: {sum(started)}/{2 * BURST} started with h2's driver killed midway")
        names = {h.index: [n for (o, n), ok in zip(jobs, started, strict=True) if ok and o is h] for h in (h1, h2)}
        ips = {n: h.container_ip(n, "burst") for h in (h1, h2) for n in names[h.index]}
        assert len(set(ips.values())) == len(ips), f"an address handed out twice: {sorted(ips.values())}"
        wait_for("etcd's claims are the running containers'",
                 lambda: set(_claims(app, "burst")) == set(ips.values()), timeout=40)  # fmt: skip
        a, b = names[h1.index][0], names[h2.index][-1]
        h1.exec(a, "ping", "-c1", "-W2", ips[b])
        h2.exec(b, "ping", "-c1", "-W2", ips[a])
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(lambda j: j[0].cli("rm", "-f", j[1], check=False, timeout=120), jobs))
        wait_for("no claim left", lambda: _claims(app, "burst") == {}, timeout=20)
        for h in (h1, h2):
            h.cli("network", "rm", "burst")
        wait_for("nothing of the burst overlay in etcd", lambda: not _mentions(app, "burst", "10.62."), timeout=20)
    finally:
        for h in (h1, h2):  # what a failure left
            left = h.cli("ps", "-aq", "--filter", f"name=^ob{h.index}x").stdout.split()
            if left:
                h.cli("rm", "-f", *left, check=False, timeout=120)
            h.cli("network", "rm", "burst", check=False)
            for key in (*gc, "PYOVERLAY_DOCKER_HOST"):
                h.driver.extra_env.pop(key, None)  # type: ignore[union-attr]
            h.restart_driver()


# Named points of an overlay network's create and delete (driver.network.modes.overlay,
# driver.network.service); the bridge-mode points are all covered in the netns tier.
CRASH_AT = ["join overlay", "claim pool", "create vxlan", "attach overlay", "program firewall",
            "mark deleting", "remove devices", "forget record"]  # fmt: skip


def _mentions(app: MultiHost, *words: str) -> list[str]:
    """etcd keys whose key or value names any of ``words``."""
    out = app.etcdctl("get", "--prefix", "/pyoverlay/").stdout.splitlines()
    pairs = zip(out[0::2], out[1::2], strict=False)
    return [k for k, v in pairs if any(w in k or w in v for w in words)]


def _network_records(h: HostNode) -> set[str]:
    assert h.driver is not None
    return {p.stem for p in (h.driver.state_dir / "store" / "network").glob("*.json")}


@pytest.mark.parametrize("point", CRASH_AT)
def test_a_crash_at_each_overlay_step_leaks_nothing_on_the_host_nor_in_etcd(app: MultiHost, point: str) -> None:
    """kill -9 at ``point`` of a ``docker network create``/``rm`` (h3 is the only member
    of the overlay), restart: whatever dockerd ended up with, the driver agrees, and what
    dockerd does not have leaves no link, record, VNI, subnet or member key behind (what
    dockerd forgot after its empty-body retry was refused goes with the Docker GC, run
    here every second)."""
    h = app[2]
    assert h.driver is not None
    env = h.driver.extra_env
    deleting = point in ("mark deleting", "remove devices", "forget record")
    if deleting:
        assert create(h, "crashnet", "crashnet", "--subnet", "10.61.0.0/24").returncode == 0
    h.stop_driver()
    gc = {"PYOVERLAY_GC_INTERVAL": "1", "PYOVERLAY_DOCKER_HOST": h.engine.host_url}
    env.update({"PYOVERLAY_FAIL_STEP": f"crash:{point}", **gc})
    h.start_driver()
    try:
        with ThreadPoolExecutor(1) as pool:
            verb = (lambda: h.cli("network", "rm", "crashnet", check=False)) if deleting else (
                lambda: create(h, "crashnet", "crashnet", "--subnet", "10.61.0.0/24"))  # fmt: skip
            done = pool.submit(verb)
            wait_for(f"the driver dies at {point!r}", lambda: h.driver is not None and h.driver.pid is None, 30)
            env.pop("PYOVERLAY_FAIL_STEP")
            h.start_driver()  # dockerd's calls, retried meanwhile, reach this one
            done.result(timeout=90)
        app_id = net_id(h, "app")
        if h.cli("network", "ls", "-q", "--filter", "name=^crashnet$").stdout.split():
            nid = net_id(h, "crashnet")  # dockerd's retry went through: a whole network
            assert {f"po-{nid[:12]}", f"pov{nid[:12]}"} <= {ln.name for ln in h.links()}
            h.cli("network", "rm", "crashnet")
        wait_for("the driver's networks are dockerd's", lambda: _network_records(h) == {app_id}, timeout=20)
        wait_for("nothing of crashnet in etcd", lambda: not _mentions(app, "crashnet", "10.61."), timeout=20)
        # The GC's delete drops the record, then the devices' rules (one call): poll, not read once.
        wait_for("its rules gone", lambda: "10.61." not in h.engine.iptables_save(), timeout=10)
        assert not [ln.name for ln in h.links() if ln.name.startswith(("po-", "pov")) and app_id[:12] not in ln.name]
    finally:
        for key in ("PYOVERLAY_FAIL_STEP", *gc):
            env.pop(key, None)
        h.restart_driver()


ENDPOINT_CRASH_AT = ["create veth", "attach", "publish endpoint", "mark ready", "remove links", "forget record"]


def _published_by(app: MultiHost, h: HostNode) -> set[str]:
    """Endpoint IDs ``h`` has published in etcd for ``app`` (peers/app/<host id>/<eid>)."""
    assert h.driver is not None
    host_id = (h.driver.state_dir / "host-id").read_text().strip()
    out = app.etcdctl("get", "--prefix", f"/pyoverlay/peers/app/{host_id}/", "--keys-only").stdout
    return {k.rsplit("/", 1)[1] for k in out.split() if k}


@pytest.mark.parametrize("point", ENDPOINT_CRASH_AT)
def test_a_crash_at_each_overlay_endpoint_step_leaves_etcd_equal_to_the_containers(
    app: MultiHost, point: str
) -> None:
    """kill -9 at ``point`` of a ``docker run`` / ``rm -f`` on h3, restart: the endpoints
    published in etcd are exactly the running containers' (what dockerd dropped goes with
    the Docker GC), and the other hosts program exactly those."""
    h, other = app[2], app[0]
    assert h.driver is not None
    env = h.driver.extra_env
    deleting = point in ("remove links", "forget record")
    if deleting:
        h.run_container("crashed", "--network", "app")
    gc = {"PYOVERLAY_GC_INTERVAL": "1", "PYOVERLAY_DOCKER_HOST": h.engine.host_url}
    h.stop_driver()
    env.update({"PYOVERLAY_FAIL_STEP": f"crash:{point}", **gc})
    h.start_driver()
    try:
        with ThreadPoolExecutor(1) as pool:
            verb = (lambda: h.cli("rm", "-f", "crashed", check=False, timeout=120)) if deleting else (
                lambda: h.cli("run", "-d", "--name", "crashed", "--network", "app", "bb", "sleep", "3600",
                              check=False, timeout=120))  # fmt: skip
            done = pool.submit(verb)
            wait_for(f"the driver dies at {point!r}", lambda: h.driver is not None and h.driver.pid is None, 30)
            env.pop("PYOVERLAY_FAIL_STEP")
            h.start_driver()
            done.result(timeout=120)
        running = h.cli("ps", "-q", "--filter", "network=app").stdout.split()
        theirs = {json.loads(h.cli("inspect", "-f", "{{json .NetworkSettings.Networks.app}}", c).stdout)["EndpointID"]
                  for c in running}  # fmt: skip
        wait_for("h3's published endpoints are its running containers'",
                 lambda: _published_by(app, h) == theirs, timeout=30)  # fmt: skip
        macs = {h.container_mac(c, "app") for c in running}
        wait_for("h1 programs exactly h3's running containers",
                 lambda: {m for m, dst in other.fdb(vxlan(other, "app")).items() if dst == h.ip} == macs, timeout=30)
    finally:
        h.cli("rm", "-f", "crashed", check=False, timeout=120)
        for key in ("PYOVERLAY_FAIL_STEP", *gc):
            env.pop(key, None)
        h.restart_driver()


def test_teardown_leaves_nothing_on_any_host_nor_in_etcd(app: MultiHost) -> None:
    for h in app:
        h.cli("rm", "-f", f"c{h.index}")
    for h in app:
        h.cli("network", "rm", "app")

    def clean() -> bool:
        left = [k for k in keys(app) if not k.startswith("/pyoverlay/hosts/")]
        return not left
    wait_for("etcd holds no overlay, address or endpoint", clean, timeout=15)
    for h in app:
        assert not [ln.name for ln in h.links() if ln.name.startswith("po")], h.name
        rules = h.engine.iptables_save()
        assert "PYOVERLAY" not in rules, h.name

