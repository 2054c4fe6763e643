"""The firewall when others move it: ordering-proof rendering, Docker's bridges, the
"still intact?" comparison, backend detection, the background check (no I/O: the
iptables binaries are replaced by FakeTables, which applies restore scripts)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from driver.errors import Unavailable
from driver.firewall import backend, bridgenf, iptables
from driver.firewall.intact import problems, snapshot
from driver.firewall.iptables import Iptables
from driver.firewall.rules import (
    FORWARD_CHAIN,
    GUARD_CHAIN,
    ISOLATION_CHAIN,
    JUMPS,
    BridgeRules,
    Published,
    render,
    with_isolation,
)
from driver.firewall.saved import docker_bridges, docker_rule_count, parse
from driver.firewall.watch import FirewallWatch

BUILTINS = {"filter": ("INPUT", "FORWARD", "OUTPUT"), "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
            "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"), "raw": ("PREROUTING", "OUTPUT")}


class FakeTables:
    """One backend's tables: iptables-save prints them, iptables-restore --noflush edits them."""

    def __init__(self) -> None:
        self.chains: dict[str, dict[str, list[str]]] = {t: {c: [] for c in cs} for t, cs in BUILTINS.items()}
        self.policy: dict[tuple[str, str], str] = {}
        self.restores = 0

    def save(self) -> str:
        out = []
        for table, chains in self.chains.items():
            out.append(f"*{table}")
            out += [f":{c} {self.policy.get((table, c), 'ACCEPT') if c in BUILTINS[table] else '-'} [0:0]"
                    for c in chains]  # fmt: skip
            out += [f"-A {c} {r}" for c, rules in chains.items() for r in rules]
            out.append("COMMIT")
        return "\n".join(out) + "\n"

    def restore(self, script: str) -> None:
        self.restores += 1
        chains: dict[str, list[str]] = {}
        for line in script.splitlines():
            if line.startswith("*"):
                chains = self.chains[line[1:]]
            elif line.startswith(":"):
                chains[line[1:].split()[0]] = []
            elif line.startswith("-A "):
                _, chain, rule = line.split(" ", 2)
                chains[chain].append(rule)
            elif line.startswith("-I "):
                _, chain, pos, rule = line.split(" ", 3)
                chains[chain].insert(int(pos) - 1, rule)
            elif line.startswith("-D "):
                _, chain, rule = line.split(" ", 2)
                chains[chain].remove(rule)
            elif line.startswith("-X "):
                del chains[line.split()[1]]

    def docker(self, *bridges: str, v20: bool = False) -> FakeTables:
        """What dockerd writes: 20.10's per-bridge FORWARD rules, or 28's DOCKER-FORWARD."""
        f = self.chains["filter"]
        if "DOCKER" not in f:  # dockerd's first start; later calls add bridges
            f.update({"DOCKER": [], "DOCKER-USER": [], "DOCKER-ISOLATION-STAGE-1": [], "DOCKER-ISOLATION-STAGE-2": []})
            f["FORWARD"][:0] = ["-j DOCKER-USER", "-j DOCKER-ISOLATION-STAGE-1" if v20 else "-j DOCKER-FORWARD"]
            if not v20:
                f["DOCKER-FORWARD"] = ["-j DOCKER-CT", "-j DOCKER-ISOLATION-STAGE-1", "-j DOCKER-BRIDGE"]
                f["DOCKER-BRIDGE"], f["DOCKER-CT"] = [], []
        for br in bridges:
            f["DOCKER-ISOLATION-STAGE-1"].append(f"-i {br} ! -o {br} -j DOCKER-ISOLATION-STAGE-2")
            f["DOCKER-ISOLATION-STAGE-2"].append(f"-o {br} -j DROP")
            if v20:
                f["FORWARD"] += [f"-o {br} -j DOCKER", f"-i {br} ! -o {br} -j ACCEPT"]
            else:
                f["DOCKER-BRIDGE"].append(f"-o {br} -j DOCKER")
                f["DOCKER-FORWARD"].append(f"-i {br} -j ACCEPT")
        return self


class Host:
    """The binaries of a host with both backends; ``default`` is what plain iptables is."""

    def __init__(self, default: str = "nft") -> None:
        self.tables = {"nft": FakeTables(), "legacy": FakeTables()}
        self.default = default
        self.calls: list[str] = []

    def which(self, name: str) -> str | None:
        return f"/usr/sbin/{name}"

    def run(self, args: list[str], stdin: str | None) -> str:
        self.calls.append(args[0])
        name = args[0].removeprefix("iptables").removeprefix("-")
        if name == "":
            return f"iptables v1.8.9 ({'nf_tables' if self.default == 'nft' else 'legacy'})"
        kind, _, verb = name.rpartition("-")
        tables = self.tables[kind or self.default]
        if verb == "save":
            return tables.save()
        assert stdin is not None
        tables.restore(stdin)
        return ""


def ours(t: FakeTables) -> list[str]:
    return [ln for ln in t.save().splitlines() if "PYOVERLAY" in ln]


NET = [BridgeRules("po-a", subnets=("10.1.0.0/24",), masquerade=False)]


# -- rendering: isolation that holds whatever the order in filter FORWARD ------------
def test_every_drop_is_also_in_mangle_which_dockerd_never_touches() -> None:
    rs = render([BridgeRules("a", icc=False, published=(Published("tcp", None, 80, "10.0.0.2", 80),)),
                 BridgeRules("b", internal=True)])  # fmt: skip
    filt, mangle = rs.chains[("filter", FORWARD_CHAIN)], rs.chains[("mangle", GUARD_CHAIN)]
    assert [r for r in filt if r.endswith("DROP")] == [r for r in mangle if r.endswith("DROP")]
    assert [r.replace("-j ACCEPT", "-j RETURN") for r in filt] == [r for r in mangle if ISOLATION_CHAIN not in r]
    assert "-j ACCEPT" not in " ".join(mangle), "mangle only drops; accepting is filter's"


def test_egress_into_dockers_bridges_goes_through_isolation_before_return() -> None:
    mangle = render([BridgeRules("a")]).chains[("mangle", GUARD_CHAIN)]
    i = mangle.index(f"-i a -j {ISOLATION_CHAIN}")
    assert mangle.index("-i a -m conntrack --ctdir REPLY ! --ctstate DNAT -j DROP") < i < mangle.index("-i a -j RETURN")


def test_isolation_chain_is_filled_from_dockers_bridges_and_allows_published_ports() -> None:
    rs = with_isolation(render([BridgeRules("a")]), ("br-1", "docker0"))
    assert rs.chains[("mangle", ISOLATION_CHAIN)] == [
        "-m conntrack --ctstate DNAT -j RETURN", "-o br-1 -j DROP", "-o docker0 -j DROP"]
    assert with_isolation(render([]), ("docker0",)).is_empty()
    assert render([BridgeRules("a")]).chains[("mangle", ISOLATION_CHAIN)] == [], "render itself stays pure"


def test_mangle_jump_goes_first() -> None:
    assert any(j.table == "mangle" and j.builtin == "FORWARD" and j.first for j in JUMPS)


# -- Docker's bridges, from Docker's own rules -----------------------------------------
def test_dockers_bridges_from_2010_and_28_rules_but_not_the_admins() -> None:
    for v20 in (True, False):
        t = FakeTables().docker("br-1", "docker0", v20=v20)
        t.chains["filter"]["FORWARD"].append("-i eth0 -o eth1 -j ACCEPT")
        t.chains["filter"]["DOCKER-USER"].append("-i eth2 -j DROP")
        assert docker_bridges(parse(t.save())) == ("br-1", "docker0")
    assert docker_bridges(parse(FakeTables().save())) == ()
    assert docker_rule_count(parse(FakeTables().save())) == 0 < docker_rule_count(parse(FakeTables().docker().save()))


# -- intact? ---------------------------------------------------------------------------
def _applied(t: FakeTables, bridges: tuple[str, ...] = ()) -> Any:
    rs = with_isolation(render(NET), bridges)
    ipt = Iptables(5, run=lambda a, s: t.save() if a[0].endswith("save") else t.restore(s or "") or "",
                   which=lambda n: None if "nft" in n or "legacy" in n else n)  # fmt: skip
    ipt.apply(render(NET))
    return rs


def test_intact_after_apply_and_each_kind_of_damage_is_named() -> None:
    t = FakeTables().docker("docker0")
    rs = _applied(t, ("docker0",))
    assert problems(rs, parse(t.save())) == []
    base = snapshot(rs, parse(t.save()))
    assert problems(rs, parse(t.save()), base) == []

    t.chains["filter"]["FORWARD"].clear()  # iptables -F FORWARD
    assert problems(rs, parse(t.save())) == ["filter FORWARD has 0 jumps to PYOVERLAY-FORWARD, not 1"]
    t.chains["filter"]["FORWARD"] += ["-j PYOVERLAY-FORWARD"] * 2
    assert problems(rs, parse(t.save())) == ["filter FORWARD has 2 jumps to PYOVERLAY-FORWARD, not 1"]
    t.chains["filter"]["FORWARD"].pop()
    t.chains["mangle"][GUARD_CHAIN].clear()  # iptables -t mangle -F
    want = len(rs.chains[("mangle", GUARD_CHAIN)])
    assert problems(rs, parse(t.save())) == [f"mangle {GUARD_CHAIN} has 0 rules, not {want}"]
    del t.chains["mangle"][GUARD_CHAIN]  # a firewalld reload
    assert "mangle PYOVERLAY-GUARD is missing" in problems(rs, parse(t.save()))


def test_a_rule_rewritten_in_place_differs_from_the_baseline() -> None:
    t = FakeTables()
    rs = _applied(t)
    base = snapshot(rs, parse(t.save()))
    t.chains["filter"][FORWARD_CHAIN][-1] = "-i po-a -j DROP"
    assert problems(rs, parse(t.save())) == [], "counts alone cannot tell"
    assert problems(rs, parse(t.save()), base) == [f"filter {FORWARD_CHAIN} was changed"]


def test_nothing_to_guard_without_rules() -> None:
    assert problems(render([]), parse(FakeTables().save())) == []


# -- backends ----------------------------------------------------------------------------
def test_choose_the_backend_holding_dockers_rules() -> None:
    assert backend.choose({"nft": 0, "legacy": 12}, "nft") == ("legacy", True)
    assert backend.choose({"nft": 30, "legacy": 12}, "legacy") == ("nft", True)
    assert backend.choose({"nft": 5, "legacy": 5}, "legacy") == ("legacy", True), "a tie: plain iptables' one"
    assert backend.choose({"nft": 0, "legacy": 0}, "nft") == ("nft", False), "dockerd not started yet"
    assert backend.choose({"nft": 0, "legacy": 0}, "nft", "legacy") == ("legacy", False), "a flush moves nothing"


def test_default_backend_from_iptables_version() -> None:
    assert backend.default_of("iptables v1.8.9 (nf_tables)") == "nft"
    assert backend.default_of("iptables v1.8.7 (legacy)") == "legacy"
    assert backend.default_of("iptables v1.6.1") == "default"


def test_candidates_are_what_is_installed() -> None:
    assert set(backend.candidates("iptables", lambda n: n if "legacy" not in n else None)) == {"nft", "default"}
    assert backend.candidates("ip6tables", lambda n: n)["legacy"].restore == "ip6tables-legacy-restore"


def test_rules_go_where_dockerd_is_and_move_when_it_shows_up_elsewhere() -> None:
    host = Host(default="nft")
    ipt = Iptables(5, run=host.run, which=host.which)
    ipt.apply(render(NET))  # dockerd not started: plain iptables' backend
    assert ours(host.tables["nft"]) and not ours(host.tables["legacy"])
    host.tables["legacy"].docker("docker0", v20=True)  # a legacy dockerd starts
    assert ipt.problems() == ["refresh: dockerd's rules are in the legacy backend, ours in nft"]
    ipt.forget()
    ipt.apply(render(NET))
    assert not ours(host.tables["nft"]), "torn down in the backend dockerd does not use"
    assert ours(host.tables["legacy"]) and ipt.problems() == []
    assert "-o docker0 -j DROP" in host.tables["legacy"].chains["mangle"][ISOLATION_CHAIN]


def test_forced_backend_is_not_detected() -> None:
    host = Host()
    host.tables["nft"].docker("docker0")
    Iptables(5, backend="legacy", run=host.run, which=host.which).apply(render(NET))
    assert ours(host.tables["legacy"]) and not ours(host.tables["nft"])
    assert "iptables-nft-save" not in host.calls


def test_unchanged_rules_cost_no_process_once_dockerd_was_seen() -> None:
    host = Host()
    host.tables["nft"].docker("docker0")
    ipt = Iptables(5, run=host.run, which=host.which)
    ipt.apply(render(NET))
    host.calls.clear()
    ipt.apply(render(NET))
    assert host.calls == []


def test_a_new_docker_bridge_is_a_problem_until_reapplied() -> None:
    host = Host()
    t = host.tables["nft"].docker("docker0")
    ipt = Iptables(5, run=host.run, which=host.which)
    ipt.apply(render(NET))
    assert ipt.problems() == []
    t.docker("br-new")
    assert ipt.problems() == ["refresh: Docker's bridges are now br-new, docker0"]
    for chain in ("DOCKER-ISOLATION-STAGE-1", "DOCKER-ISOLATION-STAGE-2", "DOCKER-BRIDGE", "DOCKER-FORWARD"):
        t.chains["filter"][chain].clear()  # iptables -F: the bridges seen before still count
    assert ipt.problems() == []


# -- the background check ------------------------------------------------------------------
class Queue:
    def __init__(self) -> None:
        self.calls: list[Callable[[], None]] = []

    def submit(self, fn: Callable[[], None]) -> None:
        self.calls.append(fn)

    def drain(self) -> None:
        while self.calls:
            self.calls.pop(0)()


def test_flush_is_repaired_once_through_the_worker_with_every_rule_once() -> None:
    host = Host()
    t = host.tables["nft"].docker("docker0")
    ipt = Iptables(5, run=host.run, which=host.which)
    sync = lambda: ipt.apply(render(NET))  # noqa: E731 - what NetworkService.sync_firewall does
    sync()
    before = sorted(ours(t))
    queue = Queue()
    watch = FirewallWatch([ipt], queue.submit, sync)
    assert not watch.check() and not queue.calls, "nothing changed: nothing queued"
    t.chains["filter"]["FORWARD"].clear()
    t.chains["nat"]["POSTROUTING"].clear()
    assert watch.check() and not watch.check(), "one repair queued, not one per check"
    restores = t.restores
    queue.drain()
    assert t.restores == restores + 1 and watch.repairs == 1
    assert sorted(ours(t)) == before
    assert not watch.check()


def test_repair_rechecks_on_the_worker() -> None:
    host = Host()
    t = host.tables["nft"].docker("docker0")
    ipt = Iptables(5, run=host.run, which=host.which)
    ipt.apply(render(NET))
    queue = Queue()
    synced: list[int] = []
    watch = FirewallWatch([ipt], queue.submit, lambda: synced.append(1))
    t.chains["filter"]["FORWARD"].clear()
    assert watch.check()
    t.chains["filter"]["FORWARD"].append("-j PYOVERLAY-FORWARD")  # e.g. a request's apply put it back
    queue.drain()
    assert synced == [] and watch.repairs == 0 and not watch._pending.is_set()


def test_a_failed_apply_is_retried_by_the_check_less_and_less_often(monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host()
    t = host.tables["nft"].docker("docker0")
    locked = True

    def run(args: list[str], stdin: str | None) -> str:
        if locked and args[0].endswith("restore"):
            raise Unavailable("iptables-restore: another program holds the xtables lock")
        return host.run(args, stdin)

    clock = [1000.0]
    monkeypatch.setattr(iptables.time, "monotonic", lambda: clock[0])
    ipt = Iptables(5, run=run, which=host.which)
    sync = lambda: ipt.apply(render(NET))  # noqa: E731
    with pytest.raises(Unavailable, match="xtables lock"):
        sync()
    assert ours(t) == []
    queue = Queue()
    watch = FirewallWatch([ipt], queue.submit, sync)
    assert not watch.check(), "not due yet"
    clock[0] += 2
    assert watch.check()
    queue.drain()  # fails again: logged, not raised
    assert watch.repairs == 0 and not watch._pending.is_set()
    clock[0] += 3
    assert not watch.check(), "the second retry waits 4 s"
    clock[0] += 1
    locked = False
    assert watch.check()
    queue.drain()
    assert watch.repairs == 1 and "-A PYOVERLAY-FORWARD -i po-a -j ACCEPT" in "\n".join(ours(t))
    clock[0] += 120
    assert not watch.check(), "applied: nothing more to retry"


# -- br_netfilter --------------------------------------------------------------------------
def test_bridge_netfilter_is_turned_on(tmp_path: Path) -> None:
    (tmp_path / "bridge-nf-call-iptables").write_text("0\n")
    (tmp_path / "bridge-nf-call-ip6tables").write_text("1\n")
    assert bridgenf.ensure(True, proc=tmp_path, load=None) is None
    assert (tmp_path / "bridge-nf-call-iptables").read_text() == "1"


def test_bridge_netfilter_that_cannot_be_set_names_cause_and_fix(tmp_path: Path) -> None:
    (tmp_path / "bridge-nf-call-iptables").mkdir()  # unwritable, as a read-only /proc/sys is
    why = bridgenf.ensure(False, proc=tmp_path, load=None)
    assert why and "net.bridge.bridge-nf-call-iptables" in why and "sysctl -w" in why
    loaded: list[int] = []
    why = bridgenf.ensure(False, proc=tmp_path / "absent", load=lambda: loaded.append(1))
    assert loaded == [1] and why and "modprobe br_netfilter" in why


@pytest.mark.parametrize("v6", [False, True])
def test_v6_sysctl_only_for_v6(tmp_path: Path, v6: bool) -> None:
    (tmp_path / "bridge-nf-call-iptables").write_text("1")
    why = bridgenf.ensure(v6, proc=tmp_path, load=None)
    assert (why is None) != v6
