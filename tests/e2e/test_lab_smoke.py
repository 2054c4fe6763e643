"""Proves the e2e harness with Docker's built-in drivers, and that it starts the driver process."""

from __future__ import annotations

import json
import os

import pytest

from tests.lab import (
    Engine,
    Lab,
    LabSession,
    Lan,
    Outside,
    links,
    mounts_under,
    netns_list,
    pids_alive,
    run,
)

pytestmark = pytest.mark.lab(driver=False)


def test_engine_is_up(engine: Engine, engine_kind: str) -> None:
    version = engine.cli("version", "--format", "{{.Server.Version}}").stdout.strip()
    assert version.startswith(engine_kind)
    assert engine.pid is not None
    # dockerd lives in the lab netns, not the host's.
    assert os.readlink(f"/proc/{engine.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert engine.cli("image", "inspect", "bb:latest").returncode == 0
    assert engine.timings["start_to_api"][0] < 15


def test_sdk_client(engine: Engine) -> None:
    client = engine.client()
    assert client.ping()
    assert any("bb:latest" in img.tags for img in client.images.list())


def test_old_cli_against_engine(engine: Engine) -> None:
    # The 20.10 client is needed for `run --mac-address` on API 1.41 (LAB §1); it must reach both engines.
    out = engine.cli("version", "--format", "{{.Client.Version}}", client="20.10").stdout
    assert out.startswith("20.10")


def test_bridge_ping_by_name(clean_engine: Engine) -> None:
    engine = clean_engine
    engine.cli("network", "create", "-d", "bridge", "--subnet", "10.31.0.0/24", "n")
    for c in ("c1", "c2"):
        engine.cli("run", "-d", "--name", c, "--network", "n", "bb", "sleep", "3600")
    r = engine.cli("exec", "c2", "ping", "-c2", "-W2", "c1")
    assert "2 packets received" in r.stdout
    # The container netns is reachable from the host by PID, whatever the engine's mount namespace.
    ns = engine.container_netns("c1")
    addrs = json.loads(run(["nsenter", f"--net={ns}", "ip", "-j", "-4", "addr", "show", "eth0"]).stdout)
    assert addrs[0]["addr_info"][0]["local"].startswith("10.31.0.")


def test_bridge_egress_to_outside(clean_engine: Engine, outside: Outside) -> None:
    engine = clean_engine
    engine.cli("network", "create", "-d", "bridge", "--subnet", "10.32.0.0/24", "nout")
    engine.cli("run", "-d", "--name", "e1", "--network", "nout", "bb", "sleep", "3600")
    r = engine.cli("exec", "e1", "ping", "-c2", "-W2", outside.ip)
    assert "2 packets received" in r.stdout
    # The outside host has no route to 10.32.0.0/24: the replies came back only through dockerd's MASQUERADE.
    routes = outside.ns.ip_json("-4", "route", "show")
    assert [r["dst"] for r in routes] == ["192.0.2.0/24"]
    assert "MASQUERADE" in engine.iptables_save()


def test_macvlan_on_lan(clean_engine: Engine, lan: Lan) -> None:
    engine = clean_engine
    engine.cli(
        "network", "create", "-d", "macvlan", "-o", f"parent={lan.parent_if}",
        "--subnet", lan.subnet, "--gateway", lan.router_ip, "--ip-range", "198.51.100.128/25", "mv",
    )  # fmt: skip
    engine.cli("run", "-d", "--name", "m1", "--network", "mv", "bb", "sleep", "3600")
    for target in (lan.router_ip, lan.host_ip):
        r = engine.cli("exec", "m1", "ping", "-c2", "-W2", target)
        assert "2 packets received" in r.stdout, target
    kinds = {ln.name: ln.kind for ln in links(lan.ns)}
    assert kinds[lan.bridge] == "bridge"


def test_live_restore_restart(lab: Lab, engine_kind: str) -> None:
    """A second engine in the same lab; the container survives a restart (persistent mount ns, LAB §8)."""
    eng = lab.engine(engine_kind, name="lr", live_restore=True).start()
    eng.cli("run", "-d", "--name", "lr1", "bb", "sleep", "3600")
    pid = eng.container_pid("lr1")
    eng.restart()
    assert eng.container_pid("lr1") == pid
    assert eng.cli("exec", "lr1", "true").returncode == 0
    eng.cli("rm", "-f", "lr1")
    eng.stop()


def test_driver_process_starts(lab: Lab, engine: Engine) -> None:
    drv = lab.driver(engine, name="pyoverlay")
    drv.start()
    assert drv.pid is not None
    assert drv.pid in engine.netns.pids()
    status, body = drv.post("Plugin.Activate")
    assert status == 200, body
    assert "NetworkDriver" in body["Implements"]
    pid = drv.pid
    drv.stop()
    assert pids_alive([pid]) == []


def _host_net_state() -> dict[str, str]:
    return {
        "links": run(["ip", "-o", "link", "show"]).stdout,
        "routes": run(["ip", "route", "show", "table", "all"]).stdout,
        "rules": "\n".join(ln for ln in run(["iptables-save"]).stdout.splitlines() if not ln.startswith("#")),
    }


def test_teardown_leaves_nothing(lab_session: LabSession, engine_kind: str) -> None:
    """A full lab (engine, outside, LAN, containers) torn down: no netns, mount, process or cgroup left."""
    host_before = _host_net_state()
    lab = lab_session.lab("t")
    eng = lab.engine(engine_kind, name="h1")
    lab.outside(eng)
    lab.lan(eng)
    eng.start()
    eng.cli("network", "create", "--subnet", "10.33.0.0/24", "tn")
    eng.cli("run", "-d", "--name", "t1", "--network", "tn", "bb", "sleep", "3600")
    cgroups_seen = eng.cgroup_dirs()
    assert cgroups_seen, "containers should live under the engine's own cgroup parent"
    pids = lab.recorded_pids()
    assert len(pids_alive(pids)) >= 2  # dockerd + containerd

    assert lab.teardown() == []
    assert netns_list(f"{lab_session.netns_prefix}{lab.label}-") == []
    assert mounts_under(lab.dir) == []
    assert not lab.dir.exists()
    assert pids_alive(pids) == []
    assert [p for p in cgroups_seen if p.exists()] == []
    assert _host_net_state() == host_before
