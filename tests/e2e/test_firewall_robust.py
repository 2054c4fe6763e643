"""The firewall holds when others move it: dockerd restarts, flushes, no DROP policy, no
br_netfilter, an iptables-legacy dockerd.

One topology for the module (networks and containers are the slow part), on an engine
with live restore so a dockerd restart keeps the containers running:

    pm  10.53.1.0/24  pyoverlay, masquerade on     pm1 .2, pm2 .3
    pr  10.53.2.0/24  pyoverlay, masquerade off    pr1 .2, pr2 .3
    db  10.53.3.0/24  Docker's own bridge          db1 .2, db2 .3

Every check runs its positive controls first (each container reaches its gateway and its
sibling), then the cross-network pings that must fail, all pings in parallel.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.helpers import Servers, ask
from tests.lab import Engine, Lab, Outside

pytestmark = pytest.mark.lab(live_restore=True)

OUT4 = "192.0.2.2"
NETS = {"pm": "10.53.1", "pr": "10.53.2", "db": "10.53.3"}
CONTROLS = [(f"{n}1", f"{p}.1") for n, p in NETS.items()] + [(f"{n}1", f"{p}.3") for n, p in NETS.items()]
CROSS = [
    ("pm1", "10.53.3.2"), ("pr1", "10.53.3.2"),  # pyoverlay → Docker's bridge
    ("db1", "10.53.1.2"), ("db1", "10.53.2.2"),  # Docker's bridge → pyoverlay
    ("pm1", "10.53.2.2"), ("pr1", "10.53.1.2"),  # pyoverlay → pyoverlay
]


def _ping(e: Engine, container: str, target: str, wait: int) -> bool:
    r = e.cli("exec", container, "ping", "-c1", f"-W{wait}", target, check=False)
    return r.returncode == 0


def reached(e: Engine, pairs: list[tuple[str, str]], wait: int = 1) -> list[tuple[str, str]]:
    """The pairs whose ping got an answer (all sent at once)."""
    with ThreadPoolExecutor(len(pairs)) as ex:
        ok = list(ex.map(lambda p: _ping(e, p[0], p[1], wait), pairs))
    return [p for p, hit in zip(pairs, ok, strict=True) if hit]


def assert_isolated(e: Engine) -> None:
    # A first control may lose its ping to ARP after a restart: retry once.
    missing = [p for p in CONTROLS if p not in reached(e, CONTROLS, wait=2)]
    missing = [p for p in missing if p not in reached(e, missing, wait=2)] if missing else []
    assert not missing, f"positive controls failed: {missing}"
    leaks = reached(e, CROSS)
    assert not leaks, f"crossed networks: {leaks}\n{forward_order(e)}"


def ipt(e: Engine, *args: str, binary: str = "iptables") -> str:
    return e.run_in_mntns(binary, "-w", "5", *args).stdout


def ours(e: Engine, save: str = "") -> collections.Counter[str]:
    """Every line of ours (chains, rules, jumps) with its table, counted."""
    out: collections.Counter[str] = collections.Counter()
    table = ""
    for ln in (save or e.iptables_save()).splitlines():
        if ln.startswith("*"):
            table = ln[1:]
        elif "PYOVERLAY" in ln:
            out[f"{table} {ln}"] += 1
    return out


def forward_order(e: Engine) -> str:
    return "\n".join(ln for ln in e.iptables_save().splitlines() if ln.startswith("-A FORWARD"))


def sysctl(e: Engine, key: str, value: str | None = None) -> str:
    if value is not None:
        e.netns.run("sysctl", "-qw", f"{key}={value}")
    return e.netns.run("sysctl", "-n", key).stdout.strip()


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def topo(engine: Engine) -> Iterator[Engine]:
    e = engine
    e.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.53.1.0/24", "pm")
    e.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.53.2.0/24",
          "-o", "com.docker.network.bridge.enable_ip_masquerade=false", "pr")
    e.cli("network", "create", "-d", "bridge", "--subnet", "10.53.3.0/24", "db")
    for net, prefix in NETS.items():
        for i in (1, 2):
            e.cli("run", "-d", "--name", f"{net}{i}", "--network", net, "--ip", f"{prefix}.{i + 1}",
                  "bb", "sleep", "3600")
    yield e
    e.remove_objects()


def test_isolation_both_ways(topo: Engine) -> None:
    assert_isolated(topo)


def test_flush_is_repaired_within_seconds(topo: Engine, outside: Outside, servers: Servers) -> None:
    e = topo
    servers.start(str(outside.ns.path), "tcp", 9000, "out")
    c1 = e.container_netns("pm1")
    assert ask(c1, "tcp", OUT4, 9000) is not None, "egress works before the flush"
    before = ours(e)
    ipt(e, "-F", "FORWARD")
    ipt(e, "-t", "nat", "-F", "POSTROUTING")
    t0 = time.monotonic()
    while not _ping(e, "pm1", OUT4, 1) and time.monotonic() - t0 < 15:
        time.sleep(0.1)
    restored = time.monotonic() - t0
    assert ask(c1, "tcp", OUT4, 9000) is not None
    print(f"dockerd {e.kind}: egress restored {restored:.1f}s after the flush")
    assert restored < 6, f"egress restored only after {restored:.1f}s"
    time.sleep(2.5)  # one more check period: a second repair would add a second jump
    after = ours(e)
    assert after == before, f"rules differ after the repair: {after - before} / {before - after}"
    assert all(n == 1 for n in after.values()), "every rule and jump of ours exactly once"
    assert not reached(e, CROSS)


def test_isolation_survives_dockerd_restart(topo: Engine, engine_kind: str) -> None:
    e = topo
    e.restart()
    deadline = time.monotonic() + 20
    while e.cli("ps", "-q", "--filter", "status=running").stdout.split().__len__() < 6:
        assert time.monotonic() < deadline, "containers did not come back"
        time.sleep(0.2)
    print(f"FORWARD after a dockerd {engine_kind} restart:\n{forward_order(e)}")
    assert_isolated(e)
    time.sleep(2.5)
    assert all(n == 1 for n in ours(e).values())


def test_forward_policy_accept_keeps_isolation(topo: Engine) -> None:
    e = topo
    policy = next(ln.split()[1] for ln in e.iptables_save().splitlines() if ln.startswith(":FORWARD "))
    ipt(e, "-P", "FORWARD", "ACCEPT")
    try:
        assert_isolated(e)
    finally:
        ipt(e, "-P", "FORWARD", policy)


def test_icc_false_without_br_netfilter(topo: Engine) -> None:
    e = topo
    key = "net.bridge.bridge-nf-call-iptables"
    old = sysctl(e, key)
    sysctl(e, key, "0")  # the engine's netns only: the sysctl is per network namespace
    try:
        e.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.53.4.0/24",
              "-o", "com.docker.network.bridge.enable_icc=false", "noicc")
        assert sysctl(e, key) == "1", "the driver turned bridged traffic through iptables on"
        for i in (1, 2):
            e.cli("run", "-d", "--name", f"ni{i}", "--network", "noicc", "--ip", f"10.53.4.{i + 1}",
                  "bb", "sleep", "3600")
        assert reached(e, [("ni2", "10.53.4.1")], wait=2), "the gateway answers"
        assert not reached(e, [("ni2", "10.53.4.2"), ("ni1", "10.53.4.3")]), "icc=false holds"
    finally:
        e.cli("rm", "-f", "ni1", "ni2", check=False)
        e.cli("network", "rm", "noicc", check=False)
        sysctl(e, key, old)


def test_ipv6_network_turns_forwarding_on(topo: Engine) -> None:
    e = topo
    key = "net.ipv6.conf.all.forwarding"
    old = sysctl(e, key)
    sysctl(e, key, "0")
    try:
        e.cli("network", "create", "-d", "pyoverlay", "--ipv6", "--subnet", "10.53.7.0/24",
              "--subnet", "fd53:7::/64", "six")
        assert sysctl(e, key) == "1"
    finally:
        e.cli("network", "rm", "six", check=False)
        sysctl(e, key, old)


@pytest.fixture(scope="module")
def legacy_engine(lab: Lab, engine_kind: str) -> Engine:
    """A second 20.10 engine whose dockerd finds iptables-legacy as `iptables` on its PATH."""
    if engine_kind != "20.10":
        pytest.skip("the legacy-backend engine is a 20.10 one (the host's binaries)")
    bindir = lab.dir / "legacy-bin"
    bindir.mkdir()
    for name in ("iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save",
                 "ip6tables-restore"):
        legacy = name.replace("tables", "tables-legacy", 1)
        (bindir / name).symlink_to(Path("/usr/sbin") / legacy)
    eng = lab.engine("20.10", name="leg")
    eng.path_prepend = [str(bindir)]
    lab.driver(eng).start()
    return eng.start()


def test_legacy_backend_gets_our_rules(legacy_engine: Engine, lab: Lab, servers: Servers) -> None:
    e = legacy_engine
    out = lab.outside(e, name="out2")
    e.cli("network", "create", "-d", "pyoverlay", "--subnet", "10.53.5.0/24", "lm")
    e.cli("network", "create", "-d", "bridge", "--subnet", "10.53.6.0/24", "ld")
    e.cli("run", "-d", "--name", "lm1", "--network", "lm", "--ip", "10.53.5.2", "bb", "sleep", "3600")
    e.cli("run", "-d", "--name", "ld1", "--network", "ld", "--ip", "10.53.6.2", "bb", "sleep", "3600")
    # A Docker network created after ours is known from the next check on (README: Known
    # limitations): wait for its bridge in our isolation chain, in the legacy tables.
    deadline = time.monotonic() + 5
    while "-A PYOVERLAY-ISOLATION -o br-" not in (legacy := e.netns.run("iptables-legacy-save").stdout):
        assert time.monotonic() < deadline, "the new Docker bridge never reached our isolation chain"
        time.sleep(0.2)
    nft = e.netns.run("iptables-nft-save").stdout
    assert ":DOCKER" in legacy and ":DOCKER" not in nft, "this dockerd programs the legacy tables"
    assert ":PYOVERLAY-FORWARD" in legacy and "PYOVERLAY" not in nft, "and so does the driver"
    servers.start(str(out.ns.path), "tcp", 9000, "out")
    assert ask(e.container_netns("lm1"), "tcp", OUT4, 9000) is not None, "egress through the legacy NAT"
    assert reached(e, [("lm1", "10.53.5.1"), ("ld1", "10.53.6.1")], wait=2) == [
        ("lm1", "10.53.5.1"), ("ld1", "10.53.6.1")]
    assert not reached(e, [("lm1", "10.53.6.2"), ("ld1", "10.53.5.2")])
