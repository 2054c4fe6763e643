"""dockerd and the host fail too: SIGKILL of dockerd (with and without live-restore), a reboot.

The driver runs with the Docker GC (``--docker-host``, ``--gc-interval 1``): after each
failure its endpoint records must equal the endpoints dockerd has, and its address
records the addresses in use (running containers and the gateway), once the GC's grace
(10 intervals) has passed. Every check is polled with a bound.

Who cleans up (seen on both engines): after a SIGKILL without live-restore, the restarted
dockerd logs "Removing stale sandbox" and itself sends Leave, DeleteEndpoint and
ReleaseAddress for the killed containers; after the reboot the driver's reconciliation
forgets those endpoints first (their veths are gone) and answers dockerd's later
DeleteEndpoint for them with 200. The GC has nothing left to collect in either case; it
must not collect anything after a live-restore either.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.lab import DriverProcess, Engine, iptables_save, links

pytestmark = pytest.mark.lab()

SUBNET = "10.93.{}.0/24"


def wait_for(
    what: str, cond: Callable[[], bool], timeout: float = 30.0, detail: Callable[[], Any] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s" + (f"; {detail()}" if detail else ""))
        time.sleep(0.2)


def pings(e: Engine, container: str, target: str) -> bool:
    return e.cli("exec", container, "ping", "-c1", "-W2", target, check=False).returncode == 0


def run(e: Engine, name: str, net: str, *args: str) -> None:
    e.cli("run", "-d", "--name", name, "--network", net, *args, "bb", "sleep", "3600")


def ours(e: Engine) -> set[str]:
    return {ln.name for ln in links(e.netns) if ln.name.startswith("po")}


def records(driver: DriverProcess, kind: str) -> list[dict[str, Any]]:
    d = driver.state_dir / "store" / kind
    out = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue  # replaced while read: the next poll reads it
    return out


def driver_endpoints(driver: DriverProcess, nid: str) -> set[str]:
    return {r["id"] for r in records(driver, "endpoint") if r["network_id"] == nid}


def docker_endpoints(e: Engine, nid: str) -> set[str]:
    info = json.loads(e.cli("network", "inspect", nid).stdout)[0]
    return {c["EndpointID"] for c in (info.get("Containers") or {}).values() if c.get("EndpointID")}


def running_addresses(e: Engine, nid: str) -> set[str]:
    info = json.loads(e.cli("network", "inspect", nid).stdout)[0]
    return {c["IPv4Address"].split("/")[0] for c in (info.get("Containers") or {}).values() if c.get("IPv4Address")}


def driver_addresses(driver: DriverProcess, subnet: str) -> list[str]:
    pools = {r["id"] for r in records(driver, "pool") if r.get("pool") == subnet}
    return sorted(r["address"] for r in records(driver, "address") if r["pool"] in pools)


def our_rules(e: Engine) -> list[str]:
    """Our rules, with the table they are in (iptables-save with the host's iptables, as the driver)."""
    out, table = [], ""
    for line in iptables_save(e.netns).splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif "PYOVERLAY" in line and not line.startswith("#"):
            out.append(f"{table} {line}")
    return out


def kill9_dockerd(e: Engine) -> None:
    pid = e.pid
    assert pid is not None, "dockerd runs"
    kids = e._children(pid)  # its containerd
    os.kill(pid, signal.SIGKILL)
    wait_for("dockerd is gone after SIGKILL", lambda: not e.running, timeout=10)
    wait_for("its containerd is gone", lambda: all(_state(k) in ("", "Z") for k in kids), timeout=10)
    # containerd dies with dockerd (its parent-death signal), but in this lab nobody reaps it: the
    # zombie makes the next dockerd believe "containerd is still running" and wait on its dead
    # socket until it gives up. A real host's init reaps it; here its pid file goes instead.
    e.run_in_mntns("rm", "-f", "/var/run/docker/containerd/containerd.pid")


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(ln.split()[1] for ln in f if ln.startswith("State:"))
    except (OSError, StopIteration):
        return ""


def network_id(e: Engine, name: str) -> str:
    return e.cli("network", "inspect", "-f", "{{.Id}}", name).stdout.strip()


def check_records_match(e: Engine, driver: DriverProcess, nid: str, subnet: str, gateway: str) -> None:
    """Endpoint records == dockerd's endpoints; address records == running containers + gateway."""
    wait_for("the driver's endpoints equal dockerd's",
             lambda: driver_endpoints(driver, nid) == docker_endpoints(e, nid),
             detail=lambda: (driver_endpoints(driver, nid), docker_endpoints(e, nid)))  # fmt: skip

    def want() -> list[str]:
        return sorted(running_addresses(e, nid) | {gateway})

    # Addresses are released only after the grace of 10 intervals (10 s here).
    wait_for("the driver's addresses equal the running containers' plus the gateway",
             lambda: driver_addresses(driver, subnet) == want(), timeout=40,
             detail=lambda: (driver_addresses(driver, subnet), want()))  # fmt: skip


@pytest.fixture(scope="module")
def gc_driver(driver: DriverProcess, engine: Engine) -> Iterator[DriverProcess]:
    driver.extra_args = ["--docker-host", f"unix://{engine.api_socket}", "--gc-interval", "1"]
    driver.restart()
    yield driver


@pytest.fixture
def fresh(clean_engine: Engine, gc_driver: DriverProcess) -> Iterator[tuple[Engine, DriverProcess]]:
    yield clean_engine, gc_driver
    # a test may leave dockerd down or with live-restore on: the next one gets a plain engine
    e = clean_engine
    if not gc_driver.running:
        gc_driver.start()
    if e.live_restore:
        e.remove_objects()
        e.stop()
        e.live_restore = False
    e.start()


def setup_net(e: Engine, n: int) -> tuple[str, str, str]:
    subnet = SUBNET.format(n)
    e.cli("network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay", "--subnet", subnet, f"df{n}")
    run(e, "keep", f"df{n}", "--restart", "always")
    run(e, "gone", f"df{n}")
    assert pings(e, "keep", "gone") and pings(e, "gone", "keep"), "positive control: the containers ping"
    return subnet, network_id(e, f"df{n}"), subnet.replace("0/24", "1")


def test_dockerd_sigkill_without_live_restore(fresh: tuple[Engine, DriverProcess]) -> None:
    e, driver = fresh
    subnet, nid, gw = setup_net(e, 1)
    old_eps = docker_endpoints(e, nid)
    assert len(old_eps) == 2 and driver_endpoints(driver, nid) == old_eps
    kill9_dockerd(e)
    e.start()
    assert network_id(e, "df1") == nid, "the network is still there"
    wait_for("the --restart always container is running again",
             lambda: e.cli("inspect", "-f", "{{.State.Running}}", "keep").stdout.strip() == "true")  # fmt: skip
    wait_for("the restarted container's network works", lambda: pings(e, "keep", gw))
    assert e.cli("run", "--rm", "--network", "df1", "bb", "ping", "-c1", "-W2", gw).returncode == 0
    check_records_match(e, driver, nid, subnet, gw)
    assert not old_eps & driver_endpoints(driver, nid), "the killed containers' endpoints are collected"
    assert e.cli("inspect", "-f", "{{.State.Running}}", "gone").stdout.strip() == "false"


def test_dockerd_sigkill_with_live_restore(fresh: tuple[Engine, DriverProcess]) -> None:
    e, driver = fresh
    e.stop()
    e.live_restore = True
    e.start()
    subnet, nid, gw = setup_net(e, 2)
    eps = docker_endpoints(e, nid)
    pids = {c: e.container_pid(c) for c in ("keep", "gone")}
    kill9_dockerd(e)
    e.start()
    assert {c: e.container_pid(c) for c in ("keep", "gone")} == pids, "the containers were not restarted"
    assert pings(e, "keep", "gone") and pings(e, "gone", "keep"), "their network survived"
    assert docker_endpoints(e, nid) == eps
    # Several GC rounds (and the address grace) later nothing dockerd has was collected.
    collected = driver.log_path.read_text().count("no longer has it")
    check_records_match(e, driver, nid, subnet, gw)
    deadline = time.monotonic() + 12  # past the grace of 10 intervals, counted from the restart
    while time.monotonic() < deadline:
        assert driver_endpoints(driver, nid) == eps
        time.sleep(1)
    assert driver_addresses(driver, subnet) == sorted(running_addresses(e, nid) | {gw})
    assert driver.log_path.read_text().count("no longer has it") == collected
    assert pings(e, "keep", "gone")


def _reboot_network(e: Engine) -> None:
    """What a reboot leaves: no link of ours, none of our rules (in the engine's netns only)."""
    for name in sorted(ours(e), key=lambda n: n.startswith("po-")):  # veths before bridges
        e.netns.run("ip", "link", "del", name, check=False)
    table = ""
    jumps, chains = [], []
    for line in iptables_save(e.netns).splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":PYOVERLAY"):
            chains.append((table, line[1:].split()[0]))
        elif line.startswith("-A ") and not line.startswith("-A PYOVERLAY") and "-j PYOVERLAY" in line:
            jumps.append((table, line[3:]))
    for t, rule in jumps:
        e.netns.run("sh", "-c", f"iptables -t {t} -D {rule}")
    for t, chain in chains:
        e.netns.run("iptables", "-t", t, "-F", chain)
    for t, chain in chains:
        e.netns.run("iptables", "-t", t, "-X", chain)


def test_simulated_reboot(fresh: tuple[Engine, DriverProcess]) -> None:
    e, driver = fresh
    subnet, nid, gw = setup_net(e, 3)
    bridge = f"po-{nid[:12]}"
    rules_before = our_rules(e)
    assert bridge in ours(e) and rules_before
    old_eps = docker_endpoints(e, nid)
    # power cut: driver and dockerd die, links and rules are gone, the state dir stays
    driver.kill9()
    kill9_dockerd(e)
    _reboot_network(e)
    assert not ours(e) and not our_rules(e), "the reboot left nothing of ours"
    driver.start()
    wait_for("the bridge is back", lambda: bridge in ours(e), timeout=20)

    def bridge_addrs() -> list[str]:
        return [f"{a['local']}/{a['prefixlen']}" for a in e.netns.ip_json("-4", "addr", "show", bridge)[0]["addr_info"]]

    wait_for("the gateway address is back on the bridge", lambda: bridge_addrs() == [f"{gw}/24"], timeout=20,
             detail=bridge_addrs)  # fmt: skip
    e.start()
    wait_for("the --restart always container is running again",
             lambda: e.cli("inspect", "-f", "{{.State.Running}}", "keep").stdout.strip() == "true")  # fmt: skip
    wait_for("the restarted container's network works", lambda: pings(e, "keep", gw))
    run(e, "new", "df3")
    assert pings(e, "new", "keep"), "a new container reaches the restarted one"
    check_records_match(e, driver, nid, subnet, gw)
    assert not old_eps & driver_endpoints(driver, nid), "endpoints of containers that did not come back are gone"
    after = our_rules(e)
    assert len(after) == len(set(after)), "each rule exactly once"
    assert [r for r in after if bridge in r] == [r for r in rules_before if bridge in r], "the network's rules are back"

    def jumps(rules: list[str]) -> list[str]:
        return [r for r in rules if "-A PYOVERLAY" not in r]

    assert jumps(after) == jumps(rules_before), "our chains and the jumps into them are back, once each"
