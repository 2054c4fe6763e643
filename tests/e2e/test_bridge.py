"""Bridge mode end to end: real dockerd (20.10 and 28.5), real containers, real pings."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.lab import DriverProcess, Engine, iptables_save, links


def sh(engine: Engine, container: str, cmd: str, check: bool = True) -> str:
    return engine.cli("exec", container, "sh", "-c", cmd, check=check).stdout


def pings(engine: Engine, container: str, target: str, six: bool = False) -> bool:
    args = ["exec", container, "ping", *(["-6"] if six else []), "-c1", "-W2", target]
    return engine.cli(*args, check=False).returncode == 0


def ipv4(engine: Engine, container: str, ifname: str = "eth0") -> list[str]:
    return sh(engine, container, f"ip -o -4 addr show {ifname} | awk '{{print $4}}'").split()


def inspect(engine: Engine, what: str, fmt: str) -> Any:
    return json.loads(engine.cli("inspect", "-f", "{{json " + fmt + "}}", what).stdout)


def run(engine: Engine, name: str, *args: str) -> None:
    engine.cli("run", "-d", "--name", name, *args, "bb", "sleep", "3600")


def ours(engine: Engine) -> list[str]:
    return [ln.name for ln in links(engine.netns) if ln.name.startswith("po")]


def rules(engine: Engine) -> list[str]:
    """iptables-save without its comment lines (they carry a timestamp)."""
    return [line for line in iptables_save(engine.netns).splitlines() if not line.startswith("#")]


def test_two_containers_ping_by_name(clean_engine: Engine) -> None:
    e = clean_engine
    e.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.50.0.0/24", "web")
    run(e, "ca", "--network", "web")
    run(e, "cb", "--network", "web")
    assert pings(e, "cb", "ca") and pings(e, "ca", "cb")
    assert pings(e, "ca", "10.50.0.1"), "the gateway answers"
    routes = sh(e, "ca", "ip route")
    assert "default via 10.50.0.1 dev eth0" in routes
    assert "eth1" not in sh(e, "ca", "ip link"), "Join returned a gateway: no docker_gwbridge fallback"
    assert ipv4(e, "ca") == ["10.50.0.2/24"]
    assert e.cli("run", "--rm", "--network", "web", "bb", "ping", "-c1", "-W2", "ca").returncode == 0


def test_mtu_applies_to_both_ends(clean_engine: Engine) -> None:
    e = clean_engine
    e.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.50.1.0/24",
          "-o", "com.docker.network.driver.mtu=1400", "small")
    run(e, "cm", "--network", "small")
    assert "mtu 1400" in sh(e, "cm", "ip link show eth0")
    host_ends = [ln for ln in links(e.netns) if ln.name.startswith("poh")]
    mtus = {json.loads(e.netns.run("ip", "-j", "link", "show", ln.name).stdout)[0]["mtu"] for ln in host_ends}
    assert mtus == {1400}


def test_static_ip_and_mac(clean_engine: Engine, engine_kind: str) -> None:
    e = clean_engine
    e.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.50.2.0/24", "fixed")
    # API 1.41 (20.10) needs the 20.10 client for --mac-address; the 28 client speaks 1.44+ to 28.5.
    client = "20.10" if engine_kind == "20.10" else "28"
    e.cli("run", "-d", "--name", "cs", "--network", "fixed", "--ip", "10.50.2.50",
          "--mac-address", "02:42:0a:32:02:99", "bb", "sleep", "3600", client=client)
    assert ipv4(e, "cs") == ["10.50.2.50/24"]
    assert "02:42:0a:32:02:99" in sh(e, "cs", "ip link show eth0")
    run(e, "ct", "--network", "fixed")
    assert pings(e, "ct", "10.50.2.50")


def test_pyoverlay_ipam_range_aux_gateway(clean_engine: Engine) -> None:
    e = clean_engine
    e.cli("network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay", "--subnet", "10.50.3.0/24",
          "--ip-range", "10.50.3.128/25", "--gateway", "10.50.3.254", "--aux-address", "printer=10.50.3.128",
          "ranged")
    ipam = inspect(e, "ranged", ".IPAM")
    assert ipam["Driver"] == "pyoverlay"
    run(e, "r1", "--network", "ranged")
    run(e, "r2", "--network", "ranged")
    # --ip-range is honoured by our IPAM (dockerd does not enforce it) and aux addresses are never handed out
    assert ipv4(e, "r1") == ["10.50.3.129/24"] and ipv4(e, "r2") == ["10.50.3.130/24"]
    assert "default via 10.50.3.254" in sh(e, "r1", "ip route")
    assert pings(e, "r1", "r2") and pings(e, "r1", "10.50.3.254")
    # a fixed --ip outside the range but inside the pool is fine; a taken one is refused
    run(e, "r3", "--network", "ranged", "--ip", "10.50.3.20")
    dup = e.cli("run", "-d", "--name", "r4", "--network", "ranged", "--ip", "10.50.3.20", "bb", "sleep", "1",
                check=False)
    assert dup.returncode != 0 and "10.50.3.20 is already allocated" in dup.stderr


def test_pyoverlay_ipam_picks_pools_and_serves_builtin_bridge(clean_engine: Engine) -> None:
    e = clean_engine
    e.cli("network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay", "auto1")
    e.cli("network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay", "auto2")
    pools = [inspect(e, n, ".IPAM.Config")[0]["Subnet"] for n in ("auto1", "auto2")]
    assert pools[0].startswith("10.2") and pools[0] != pools[1]
    e.cli("network", "create", "-d", "bridge", "--ipam-driver", "pyoverlay", "--subnet", "10.50.4.0/24", "builtin")
    run(e, "cp", "--network", "builtin")
    assert ipv4(e, "cp") == ["10.50.4.2/24"]
    overlap = e.cli("network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay",
                    "--subnet", "10.50.4.0/25", "clash", check=False)
    assert overlap.returncode != 0 and "overlaps pool 10.50.4.0/24" in overlap.stderr
    # --ipv6 without a v6 subnet: dockerd asks for one and ours picks from its ULA range
    e.cli("network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay", "--ipv6",
          "--subnet", "10.50.9.0/24", "autov6")
    v6 = [c["Subnet"] for c in inspect(e, "autov6", ".IPAM.Config") if ":" in c["Subnet"]]
    assert v6 and v6[0].startswith("fd70:7079:6f76:")
    run(e, "cv6", "--network", "autov6")
    assert pings(e, "cv6", v6[0].split("/")[0] + "1", six=True)


def test_dual_stack(clean_engine: Engine) -> None:
    e = clean_engine
    e.cli("network", "create", "-d", "pyoverlay", "--ipv6", "--subnet", "10.50.5.0/24",
          "--subnet", "fd50:5::/64", "dual")
    run(e, "d1", "--network", "dual")
    run(e, "d2", "--network", "dual")
    v6 = sh(e, "d1", "ip -o -6 addr show eth0 scope global")
    assert "fd50:5::2/64" in v6
    assert "default via fd50:5::1" in sh(e, "d1", "ip -6 route")
    assert pings(e, "d2", "fd50:5::2", six=True)
    assert pings(e, "d2", "fd50:5::1", six=True), "the IPv6 gateway answers at once (no DAD wait)"
    assert pings(e, "d2", "d1")


def test_driver_restart_keeps_containers_working(clean_engine: Engine, driver: DriverProcess) -> None:
    e = clean_engine
    e.cli("network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay", "--subnet", "10.50.6.0/24", "keep")
    run(e, "k1", "--network", "keep")
    run(e, "k2", "--network", "keep")
    for crash in (False, True):
        if crash:
            driver.kill9()
            driver.start()
        else:
            driver.restart()
        assert pings(e, "k1", "k2"), "the kernel plumbing outlives the driver process"
    # Docker never replays CreateNetwork: the driver knows the network from its own store.
    run(e, "k3", "--network", "keep")
    assert ipv4(e, "k3") == ["10.50.6.4/24"], "no address is handed out twice after restarts"
    assert pings(e, "k3", "k1") and pings(e, "k1", "k3")
    saved = iptables_save(e.netns)
    bridge = next(n for n in ours(e) if n.startswith("po-"))
    assert saved.count(f"-A PYOVERLAY-FORWARD -i {bridge} -o {bridge} -j ACCEPT") == 1
    e.cli("rm", "-f", "k1", "k2", "k3")
    e.cli("network", "rm", "keep")


def test_network_rm_leaves_nothing(clean_engine: Engine, driver: DriverProcess) -> None:
    e = clean_engine
    e.cli("network", "create", "-d", "pyoverlay", "--ipv6", "--subnet", "10.50.7.0/24",
          "--subnet", "fd50:7::/64", "-o", "com.docker.network.bridge.name=br-gone", "gone")
    run(e, "cg", "--network", "gone")
    assert "br-gone" in [ln.name for ln in links(e.netns)]
    e.cli("rm", "-f", "cg")
    e.cli("network", "rm", "gone")
    assert not ours(e)
    assert "br-gone" not in [ln.name for ln in links(e.netns)]
    for v6 in (False, True):
        assert "PYOVERLAY" not in iptables_save(e.netns, v6=v6)
    assert not list((driver.state_dir / "store").rglob("*.json"))


@pytest.mark.parametrize("bad", [
    ["-o", "mode=vxlan2"],
    ["-o", "com.docker.network.bridge.name=br;reboot"],
    ["-o", "com.docker.network.driver.mtu=99999"],
])
def test_bad_options_fail_cleanly(clean_engine: Engine, bad: list[str]) -> None:
    e = clean_engine
    before = (ours(e), rules(e))
    r = e.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.50.8.0/24", *bad, "bad", check=False)
    assert r.returncode != 0 and "option" in r.stderr
    assert (ours(e), rules(e)) == before


def test_dockerd_restart_brings_restart_always_containers_back(clean_engine: Engine, driver: DriverProcess) -> None:
    """dockerd never replays CreateNetwork: after its restart, a --restart always container
    re-joins a network it only knows from its own store (new EndpointID, same driver)."""
    e = clean_engine
    e.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.50.10.0/24", "durable")
    e.cli("run", "-d", "--name", "keeper", "--restart", "always", "--network", "durable", "bb", "sleep", "3600")
    run(e, "other", "--network", "durable")
    e.restart()
    assert e.cli("inspect", "-f", "{{.State.Running}}", "keeper").stdout.strip() == "true"
    e.cli("start", "other")
    assert pings(e, "keeper", "other") and pings(e, "other", "keeper")
    assert pings(e, "keeper", "10.50.10.1")
    records = list((driver.state_dir / "store" / "endpoint").glob("*.json"))
    assert len(records) == 2, "endpoints of the stopped containers were deleted, the new ones recorded"
