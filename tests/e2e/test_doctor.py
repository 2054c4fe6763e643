"""pyoverlay doctor inside a lab engine's netns, on both engine kinds: ok on a healthy host,
and each problem it checks for, made on purpose (in that netns only), is caught with its
fix; each is undone in a ``finally`` and doctor is shown saying ok again afterwards.

Not made here: firewalld running (it cannot be simulated without touching the host's own
firewall) and objects the driver failed to restore at its start (the reconciliation line).

A dockerd start puts dockerd's FORWARD jumps back at the top, ahead of ours, and doctor
warns about that (the stopped-dockerd test shows it, and its fix), although
driver.firewall.rules says that position no longer matters for isolation.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Host
from tests.lab import run
from tests.lab.etcd import EtcdCluster

pytestmark = pytest.mark.lab()  # both kinds: 20.10 and 28.5
REPO = Path(__file__).resolve().parents[2]
BRIDGE_NF = "net.bridge.bridge-nf-call-iptables"
IP_FORWARD = "net.ipv4.ip_forward"
JUMP = "-A FORWARD -j PYOVERLAY-FORWARD"


def doctor(host: Host, *extra: str, path: str | None = None) -> tuple[int, dict[str, str]]:
    """doctor's lines by check name, e.g. "ok forward policy: ACCEPT"; `path`: its PATH."""
    assert host.driver is not None
    argv = host.engine.netns.cmd(sys.executable, "-m", "driver", "doctor", "--socket", str(host.driver.socket_path),
                                 "--state-dir", str(host.driver.state_dir), "--docker-host", host.engine.host_url,
                                 *extra)  # fmt: skip
    argv[0] = shutil.which(argv[0]) or argv[0]  # nsenter, found whatever `path` says
    env = dict(os.environ, PYTHONPATH=str(REPO), **({"PATH": path} if path is not None else {}))
    r = run(argv, check=False, timeout=60, env=env)
    lines = {}
    for line in r.stdout.splitlines():
        level, _, rest = (part.strip() for part in line.partition("  "))
        lines[rest.split(":", 1)[0]] = f"{level} {rest}"  # "ok forward policy: ACCEPT"
    return r.returncode, lines


def sysctl(host: Host, key: str, value: str | None = None) -> str:
    """Read (or write) a sysctl of the engine's network namespace, never the host's."""
    ns = host.engine.netns
    if value is not None:
        ns.run("sysctl", "-w", f"{key}={value}")
    return ns.run("sysctl", "-n", key).stdout.strip()


def iptables(host: Host, *args: str) -> str:
    """iptables in the engine's netns, with the engine's own binary (sid's for 28.5)."""
    return host.engine.run_in_mntns("iptables", *args).stdout


def policy(host: Host) -> str:
    return next(r.split()[2] for r in iptables(host, "-S", "FORWARD").splitlines() if r.startswith("-P FORWARD "))


@pytest.fixture(scope="module")
def lab_host(host: Host) -> Iterator[Host]:
    # A network, so the driver has its FORWARD jump (it keeps none without networks).
    host.engine.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.55.0.0/24", "docnet")
    yield host
    host.engine.remove_objects()


def assert_ok(host: Host, *checks: str) -> dict[str, str]:
    rc, lines = doctor(host)
    for check in checks:
        assert lines[check].startswith("ok "), lines
    assert rc == 0, lines
    return lines


def test_healthy_host_is_ok(lab_host: Host) -> None:
    lines = assert_ok(lab_host, "dockerd", "driver", "firewall", "forward jump", "forward policy",
                      "ipv4 forwarding", "br_netfilter")  # fmt: skip
    print("\n".join(lines.values()))  # shown with -s: what a healthy lab host reports
    assert lab_host.kind in lines["dockerd"] and "after DOCKER-USER" in lines["forward jump"]
    assert "etcd" not in lines and "underlay" not in lines  # the local store: no cluster checks


def test_ipv4_forwarding_off_is_caught(lab_host: Host) -> None:
    before = sysctl(lab_host, IP_FORWARD)
    assert before == "1"  # the driver turned it on with its network
    try:
        assert sysctl(lab_host, IP_FORWARD, "0") == "0"  # per netns: only the lab host's
        rc, lines = doctor(lab_host)
    finally:
        sysctl(lab_host, IP_FORWARD, before)
    line = lines["ipv4 forwarding"]
    assert rc == 1 and line.startswith("fail "), lines
    assert "no egress" in line and "fix: sysctl -w net.ipv4.ip_forward=1" in line
    assert_ok(lab_host, "ipv4 forwarding")


def test_bridge_netfilter_off_is_caught(lab_host: Host) -> None:
    before = sysctl(lab_host, BRIDGE_NF)
    try:
        sysctl(lab_host, BRIDGE_NF, "0")  # per netns: only the lab host's
        rc, lines = doctor(lab_host)
    finally:
        sysctl(lab_host, BRIDGE_NF, before)
    assert rc == 1 and lines["br_netfilter"].startswith("fail ") and "icc=false" in lines["br_netfilter"]
    assert f"fix: sysctl -w {BRIDGE_NF}=1" in lines["br_netfilter"]
    assert_ok(lab_host, "br_netfilter")


def test_deleted_forward_jump_is_caught(lab_host: Host) -> None:
    ns = lab_host.engine.netns

    def forward() -> list[str]:
        return [r for r in ns.run("iptables", "-S", "FORWARD").stdout.splitlines() if r.startswith("-A ")]

    position = forward().index(JUMP) + 1
    # The driver puts a missing jump back within its firewall check interval (2 s), so
    # keep deleting it while doctor runs; the loop is killed by its PID afterwards.
    loop = ns.popen(["sh", "-c", "while :; do iptables -D FORWARD -j PYOVERLAY-FORWARD 2>/dev/null; sleep 0.05; done"])
    try:
        for _ in range(3):  # doctor may still read the moment between a repair and the next delete
            rc, lines = doctor(lab_host)
            if lines["forward jump"].startswith("fail "):
                break
    finally:
        loop.kill()
        loop.wait(10)
        if JUMP not in forward():
            ns.run("iptables", "-I", "FORWARD", str(position), "-j", "PYOVERLAY-FORWARD")
    assert rc == 1 and lines["forward jump"].startswith("fail ")
    assert "no jump to PYOVERLAY-FORWARD" in lines["forward jump"] and "restart the driver" in lines["forward jump"]
    assert forward().count(JUMP) == 1
    assert "after DOCKER-USER" in assert_ok(lab_host, "forward jump")["forward jump"]


def test_stopped_driver_is_caught(lab_host: Host) -> None:
    driver = lab_host.driver
    assert driver is not None
    driver.stop()
    try:
        rc, lines = doctor(lab_host)
    finally:
        driver.start()
    assert rc == 1 and lines["driver"].startswith("fail ") and "no answer on" in lines["driver"], lines
    assert "fix: start it" in lines["driver"]
    assert lines["dockerd"].startswith("ok ")
    assert_ok(lab_host, "driver", "forward jump")


def test_stopped_dockerd_and_its_leftover_drop_policy_are_caught(lab_host: Host) -> None:
    engine = lab_host.engine
    engine.stop()
    try:
        before = policy(lab_host)
        try:
            # 20.10 always sets DROP at start; 28.5 only when it turned forwarding on itself,
            # so make sure the leftover is there (as a dockerd that did leaves it).
            iptables(lab_host, "-P", "FORWARD", "DROP")
            rc, lines = doctor(lab_host)
            assert rc == 1 and lines["dockerd"].startswith("fail ") and "fix: start dockerd" in lines["dockerd"]
            assert lines["driver"].startswith("ok ") and lines["forward jump"].startswith("ok ")
            assert lines["forward policy"].startswith("warn ") and "left by dockerd" in lines["forward policy"]
            assert "fix: iptables -P FORWARD ACCEPT" in lines["forward policy"]
            iptables(lab_host, "-P", "FORWARD", "ACCEPT")  # the fix doctor gives
            _, lines = doctor(lab_host)
            assert lines["forward policy"] == "ok forward policy: ACCEPT", lines
        finally:
            iptables(lab_host, "-P", "FORWARD", before)
    finally:
        engine.start()
    lines = assert_ok(lab_host, "dockerd", "forward policy")
    assert lab_host.kind in lines["dockerd"]
    # dockerd puts its own FORWARD jumps back at the top when it starts (below DOCKER-USER),
    # so ours now comes after them: doctor says where, and that it does not matter.
    assert lines["forward jump"].startswith("ok ") and "after dockerd's" in lines["forward jump"], lines


def test_unreachable_etcd_is_caught_and_the_underlay_mtu_reported(lab_host: Host) -> None:
    ns = lab_host.engine.netns
    (link,) = ns.ip_json("link", "show", "docker0")
    addr = next(a["local"] for a in ns.ip_json("addr", "show", "docker0")[0]["addr_info"] if a["family"] == "inet")
    cluster = ("--store", "etcd", "--advertise-addr", "docker0")
    # Nothing listens on port 2 of the engine's own loopback: refused at once.
    rc, lines = doctor(lab_host, *cluster, "--etcd-endpoints", "http://127.0.0.1:2")
    assert rc == 1 and lines["etcd"].startswith("fail "), lines
    assert "no answer from http://127.0.0.1:2" in lines["etcd"] and "etcdctl endpoint health" in lines["etcd"]
    mtu = int(link["mtu"])
    assert lines["underlay"] == (f"ok underlay: VTEP {addr} on docker0 (MTU {mtu}): overlay networks get MTU "
                                 f"{mtu - 50}"), lines  # fmt: skip
    # The positive control: an etcd there, and the same line says ok.
    with EtcdCluster([(ns, "127.0.0.1")], lab_host.engine.dir / "doctor-etcd") as etcd:
        rc, lines = doctor(lab_host, *cluster, "--etcd-endpoints", etcd.endpoints[0])
    assert lines["etcd"].startswith("ok etcd: answers"), lines
    assert rc == 0, lines


def test_forward_jump_before_docker_user_is_caught(lab_host: Host) -> None:
    ns = lab_host.engine.netns

    def forward() -> list[str]:
        return [r for r in ns.run("iptables", "-S", "FORWARD").stdout.splitlines() if r.startswith("-A ")]

    original = forward()
    position = original.index(JUMP) + 1
    assert original.index("-A FORWARD -j DOCKER-USER") < position - 1
    # The driver's firewall check counts its jumps, it does not reorder them: one jump, at the
    # top, stays there (insert the misplaced one first, so the count is never 0).
    ns.run("iptables", "-I", "FORWARD", "1", "-j", "PYOVERLAY-FORWARD")
    try:
        ns.run("iptables", "-D", "FORWARD", str(position + 1))
        assert forward()[0] == JUMP and forward().count(JUMP) == 1
        rc, lines = doctor(lab_host)
    finally:
        if forward() != original:
            ns.run("iptables", "-I", "FORWARD", str(position + 1), "-j", "PYOVERLAY-FORWARD")
            ns.run("iptables", "-D", "FORWARD", "1")
    assert forward() == original
    assert rc == 0 and lines["forward jump"].startswith("warn ") and "before DOCKER-USER" in lines["forward jump"]
    assert "fix: iptables -D FORWARD -j PYOVERLAY-FORWARD, then restart the driver" in lines["forward jump"]
    assert_ok(lab_host, "forward jump")


def test_missing_iptables_is_caught(lab_host: Host, tmp_path: Path) -> None:
    # doctor alone runs with a PATH without iptables (nothing is removed from the host).
    empty = tmp_path / "bin"
    empty.mkdir()
    rc, lines = doctor(lab_host, path=str(empty))
    assert rc == 1 and lines["firewall"].startswith("fail "), lines
    assert "iptables does not run" in lines["firewall"] and "fix: install iptables" in lines["firewall"]
    assert lines["forward jump"].startswith("warn ") and "cannot read the FORWARD chain" in lines["forward jump"]
    assert lines["dockerd"].startswith("ok ") and lines["driver"].startswith("ok ")
    assert_ok(lab_host, "firewall", "forward jump")


def test_ipv6_forwarding_off_with_an_ipv6_network_is_caught(lab_host: Host) -> None:
    key = "net.ipv6.conf.all.forwarding"
    engine = lab_host.engine
    engine.cli("network", "create", "-d", "pyoverlay", "--ipv6", "--subnet", "10.56.0.0/24",
               "--subnet", "fd56::/64", "docnet6")  # fmt: skip
    try:
        before = sysctl(lab_host, key)
        assert before == "1"  # the driver turned it on with its IPv6 network
        try:
            sysctl(lab_host, key, "0")
            rc, lines = doctor(lab_host)
        finally:
            sysctl(lab_host, key, before)
        assert rc == 0 and lines["ipv6 forwarding"].startswith("warn "), lines
        assert "1 IPv6 network(s)" in lines["ipv6 forwarding"] and f"fix: sysctl -w {key}=1" in lines["ipv6 forwarding"]
        assert_ok(lab_host, "ipv6 forwarding")
    finally:
        engine.cli("network", "rm", "docnet6")


def test_small_or_missing_underlay_is_caught(lab_host: Host) -> None:
    ns = lab_host.engine.netns
    cluster = ("--store", "etcd", "--etcd-endpoints", "http://127.0.0.1:2")
    # A link of the lab host's own, with an MTU too small for IPv6 overlays (1300 - 50 < 1280).
    ns.ip("link", "add", "podoc0", "mtu", "1300", "type", "veth", "peer", "name", "podoc1")  # both ends in it
    try:
        ns.ip("addr", "add", "203.0.113.77/32", "dev", "podoc0")
        _, lines = doctor(lab_host, *cluster, "--advertise-addr", "podoc0")
        line = lines["underlay"]
        assert line.startswith("warn ") and "(MTU 1300): overlay networks get MTU 1250" in line, lines
        assert "too small for IPv6 overlays" in line and "fix: raise the underlay's MTU" in line
        ns.ip("link", "set", "podoc0", "mtu", "1500")
        _, lines = doctor(lab_host, *cluster, "--advertise-addr", "podoc0")
        assert lines["underlay"] == "ok underlay: VTEP 203.0.113.77 on podoc0 (MTU 1500): overlay networks get MTU 1450"
        # An address this host does not have.
        _, lines = doctor(lab_host, *cluster, "--advertise-addr", "203.0.113.78")
        line = lines["underlay"]
        assert line.startswith("fail ") and "203.0.113.78 is not an address of this host" in line, lines
        assert "fix: give --advertise-addr an address or interface of this host" in line
    finally:
        ns.ip("link", "del", "podoc0")
