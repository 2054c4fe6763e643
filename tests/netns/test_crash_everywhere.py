"""A crash anywhere is harmless: kill -9 at every named point of every verb, and of
reconciliation itself, then restart and compare with a run that never crashed.

One dockerd-shaped lifecycle (``CALLS``: IPAM pools and gateways, a network, two
endpoints with published ports, Revoke, deletes, releases) is first run once without a
crash (the *reference*), recording after each call the driver's full state (records,
``po*`` links with their master/MTU/up, their addresses, iptables and ip6tables) and,
from the driver's log, the points each call passed (``step: <name>``). The reference
also restarts the driver after every call and checks that a fresh reconciliation
changes nothing, so a state equal to a reference state is one a restart leaves alone.

Each case then replays the lifecycle in its own namespace with
``PYOVERLAY_FAIL_STEP=crash:<point>``, up to the call that dies there, checks that the
process died by SIGKILL at exactly that point, restarts it without the hook and checks:

* the state is the reference state from just before the call or just after it: nothing
  half-done, no record ``creating``/``deleting``, links ⇔ records, rules exactly those
  of the records, IPAM addresses exactly dockerd's (what a restart leaves unchanged, see
  above);
* dockerd's real retry, with an empty body (moby/moby#33412), is refused and changes
  nothing: whatever dockerd then forgets is a ready record, which the Docker GC collects
  with the same delete verbs the rest of the lifecycle calls;
* the same call with its body succeeds with the reference's answer and the reference's
  state (idempotent), and the rest of the lifecycle then leaves nothing behind.

Reconciliation cases crash the start-up instead (after a first crash, a lost bridge or
an orphaned link), restart once more and check the same. ``test_every_point_is_covered``
derives the points from the code (every ``checkpoint(...)`` and ``steps.run(...)`` name)
and from the reference trace, so a new step without a case here fails.

Cases run concurrently (one namespace and driver each; a driver start costs about a
second of CPU, and each case needs two or three).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from driver.network.steps import matches
from tests.lab import DriverProcess, Netns
from tests.netns.test_bridge import NET, NID
from tests.plugin import Plugin, start_plugin, stop_plugin

REPO = Path(__file__).resolve().parents[2]
BRIDGE = "po-" + NID[:12]
E1, E2 = "1" * 64, "2" * 64
P4, P6 = "PyoverlayLocal/10.70.0.0/24", "PyoverlayLocal/fd70:70::/64"
GW = {"RequestAddressType": "com.docker.network.gateway"}


def _portmap(host_port: int) -> dict[str, Any]:
    return {"com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "",
                                            "HostPort": host_port, "HostPortEnd": host_port}],
            "com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}]}


def _endpoint(eid: str, addr: str) -> dict[str, Any]:
    return {"NetworkID": NID, "EndpointID": eid, "Interface": {"Address": addr, "AddressIPv6": "", "MacAddress": ""},
            "Options": _portmap(0) | {"com.docker.network.portmap": []}}


def _pool(pool: str, v6: bool) -> dict[str, Any]:
    return {"AddressSpace": "PyoverlayLocal", "Pool": pool, "SubPool": "", "Options": {}, "V6": v6}


# dockerd's calls, in dockerd's order: network create, run twice (the second deleted without
# Revoke, as after a plugin re-enable), stop of the second, network rm with the first
# endpoint still there (DeleteNetwork removes what is left).
CALLS: list[tuple[str, dict[str, Any]]] = [
    ("IpamDriver.RequestPool", _pool("10.70.0.0/24", False)),  # 0
    ("IpamDriver.RequestAddress", {"PoolID": P4, "Address": "10.70.0.1", "Options": GW}),  # 1
    ("IpamDriver.RequestPool", _pool("fd70:70::/64", True)),  # 2
    ("IpamDriver.RequestAddress", {"PoolID": P6, "Address": "fd70:70::1", "Options": GW}),  # 3
    ("NetworkDriver.CreateNetwork", NET),  # 4
    ("IpamDriver.RequestAddress", {"PoolID": P4, "Address": "", "Options": None}),  # 5 → .2
    ("NetworkDriver.CreateEndpoint", _endpoint(E1, "10.70.0.2/24")),  # 6
    ("NetworkDriver.Join", {"NetworkID": NID, "EndpointID": E1, "SandboxKey": "/x", "Options": {}}),  # 7
    ("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NID, "EndpointID": E1, "Options": _portmap(8080)}),
    ("IpamDriver.RequestAddress", {"PoolID": P4, "Address": "", "Options": None}),  # 9 → .3
    ("NetworkDriver.CreateEndpoint", _endpoint(E2, "10.70.0.3/24")),  # 10
    ("NetworkDriver.ProgramExternalConnectivity", {"NetworkID": NID, "EndpointID": E2, "Options": _portmap(8081)}),
    ("NetworkDriver.RevokeExternalConnectivity", {"NetworkID": NID, "EndpointID": E1}),  # 12
    ("NetworkDriver.DeleteEndpoint", {"NetworkID": NID, "EndpointID": E2}),  # 13: still has its port
    ("IpamDriver.ReleaseAddress", {"PoolID": P4, "Address": "10.70.0.3"}),  # 14
    ("IpamDriver.ReleaseAddress", {"PoolID": P4, "Address": "10.70.0.2"}),  # 15
    ("IpamDriver.ReleaseAddress", {"PoolID": P4, "Address": "10.70.0.1"}),  # 16
    ("IpamDriver.ReleasePool", {"PoolID": P4}),  # 17
    ("IpamDriver.ReleaseAddress", {"PoolID": P6, "Address": "fd70:70::1"}),  # 18
    ("IpamDriver.ReleasePool", {"PoolID": P6}),  # 19
    ("NetworkDriver.DeleteNetwork", {"NetworkID": NID}),  # 20: E1 is still there
]
# Calls whose points are all cases; the others repeat a template already covered
# (the IPv6 pool and gateway, dynamic addresses, E1's twin calls, Join has none).
TARGETS = {0, 1, 4, 6, 8, 12, 13, 14, 17, 20}


@dataclass(frozen=True)
class Case:
    point: str  # the point the (last) crash happens at
    call: int  # the first call not (known to be) done: the reference state before it is ref[call]
    first: str | None = None  # reconciliation cases: the point of a first crash in CALLS[call]
    tamper: str | None = None  # reconciliation cases: what happens to the kernel while the driver is down

    @property
    def at_start(self) -> bool:
        return self.first is not None or self.tamper is not None

    @property
    def id(self) -> str:
        return f"{self.first} -> {self.point}" if self.first else self.point if not self.tamper else \
            f"{self.tamper}: {self.point}"


def _verb_cases() -> list[Case]:
    n, e1, e2 = NID[:12], E1[:12], E2[:12]
    by_call = {
        0: [f"request pool {P4}: save pool", f"request pool {P4}: answer"],
        1: [f"request address {P4} 10.70.0.1: save address", f"request address {P4} 10.70.0.1: answer"],
        4: [f"create network {n}: {s}" for s in (
            f"create bridge {BRIDGE}", f"enable IPv6 on {BRIDGE}", "bridged traffic through iptables",
            "enable forwarding", f"route_localnet on {BRIDGE}", f"add gateway 10.70.0.1/24 to {BRIDGE}",
            f"add gateway fd70:70::1/64 to {BRIDGE}", f"bring up {BRIDGE}", "program firewall")],
        6: [f"create endpoint {e1}: {s}" for s in (
            f"create veth poh{e1}/poc{e1}", f"attach poh{e1} to {BRIDGE}", f"hairpin on poh{e1}", "mark ready",
            "answer")],
        8: [f"program endpoint {e1}: save ports", f"program endpoint {e1}: sync firewall"],
        12: [f"revoke endpoint {e1}: save ports", f"revoke endpoint {e1}: sync firewall"],
        13: [f"delete endpoint {e2}: {s}" for s in ("mark deleting", "remove links", "forget record",
                                                     "sync firewall")],
        14: [f"release address {P4} 10.70.0.3: forget address"],
        17: [f"release pool {P4}: forget addresses", f"release pool {P4}: forget pool"],
        20: [f"delete network {n}: {s}" for s in ("mark deleting", f"delete endpoint {e1}", "remove devices",
                                                   "forget record", "sync firewall")],
    }
    return [Case(point, call) for call, points in by_call.items() for point in points]


def _reconcile_cases() -> list[Case]:
    n, e1, e2 = NID[:12], E1[:12], E2[:12]
    lost = "bridge lost"
    return [
        Case(f"reconcile: roll back network {n}", 4, first=f"create network {n}: add gateway 10.70.0.1/24 to {BRIDGE}"),
        Case(f"reconcile: forget endpoint {e1}", 6, first=f"create endpoint {e1}: attach poh{e1} to {BRIDGE}"),
        Case(f"reconcile: finish deleting endpoint {e2}", 13, first=f"delete endpoint {e2}: remove links"),
        Case(f"delete endpoint {e2}: sync firewall", 13, first=f"delete endpoint {e2}: remove links"),
        Case(f"reconcile: finish deleting network {n}", 20, first=f"delete network {n}: remove devices"),
        Case(f"delete network {n}: forget record", 20, first=f"delete network {n}: delete endpoint {e1}"),
        Case("reconcile: sync firewall", 8, first=f"program endpoint {e1}: sync firewall"),
        Case("reconcile: delete orphaned link poh0123456789ab", 5, tamper="orphaned veth"),
        Case(f"reconcile: restore network {n}", 5, tamper=lost),
        *(Case(f"ensure network {n}: {s}", 5, tamper=lost) for s in (
            f"enable IPv6 on {BRIDGE}", "bridged traffic through iptables", "enable forwarding",
            f"route_localnet on {BRIDGE}", f"add gateway 10.70.0.1/24 to {BRIDGE}",
            f"add gateway fd70:70::1/64 to {BRIDGE}", f"bring up {BRIDGE}")),
    ]


CASES = _verb_cases() + _reconcile_cases()

# Points of the code no case here reaches, and why.
NOT_HERE = {
    "hand the device over to network": "macvlan only (a VLAN sub-interface two networks share); needs a parent",
    "restore endpoint": "overlay only (remote peers); needs etcd",
}
MODES_NOT_HERE = ("macvlan.py", "overlay.py")  # their steps: a parent interface / etcd

# -- state ----------------------------------------------------------------------------

STEP_LINE = re.compile(r" driver\.network\.steps: step: (.*?)(?: \[(?:network|endpoint) [^\]]*\])?$")


def state(p: Plugin) -> dict[str, Any]:
    """Everything a crash could leave wrong, comparable across namespaces."""
    store = p.driver.state_dir / "store"
    records = {f.relative_to(store).as_posix(): json.loads(f.read_text()) for f in sorted(store.rglob("*.json"))}
    own = [ln for ln in p.ns.ip_json("-d", "link") if ln["ifname"].startswith("po")]
    # The kernel sets a bridge whose last port goes to 1500, and back to its ports' MTU
    # when one is added (so nothing flows at 1500): a port-less bridge's MTU is not compared.
    masters = {ln.get("master") for ln in own}
    links = sorted((ln["ifname"], ln.get("linkinfo", {}).get("info_kind"), ln.get("master"),
                    ln["mtu"] if ln["ifname"] in masters or not ln["ifname"].startswith("po-") else "no ports",
                    "UP" in ln["flags"]) for ln in own)
    addrs = sorted((i["ifname"], a["local"], a["prefixlen"]) for i in p.ns.ip_json("addr")
                   if i["ifname"].startswith("po") for a in i.get("addr_info", []) if a.get("scope") != "link")
    rules = [re.sub(r"\[\d+:\d+\]", "", line) for v6 in (False, True) for line in p.iptables(v6).splitlines()
             if not line.startswith("#")]
    return {"records": records, "links": links, "addrs": addrs, "rules": rules}


def check_invariants(s: dict[str, Any]) -> None:
    recs = s["records"]
    statuses = {k: v["status"] for k, v in recs.items() if "status" in v}
    assert set(statuses.values()) <= {"ready"}, f"records left half-done: {statuses}"
    want = {BRIDGE for k in recs if k.startswith("network/")}
    want |= {f"po{end}{v['id'][:12]}" for k, v in recs.items() if k.startswith("endpoint/") for end in "hc"}
    assert {ln[0] for ln in s["links"]} == want, "links ⇔ records"
    bridges = {m for line in s["rules"] for m in re.findall(r"po-[0-9a-f]{12}", line)}
    assert bridges == (want & {BRIDGE}), "rules name exactly the recorded bridges"
    ports = {str(b["host_port"]) for k, v in recs.items() if k.startswith("endpoint/") for b in v.get("ports", [])}
    dnat = {m for line in s["rules"] if line.startswith("-A PYOVERLAY-DNAT ")
            for m in re.findall(r"--dport (\d+)", line)}
    assert dnat == ports, "published-port rules ⇔ the endpoints' ports"


def assert_same(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    for key, value in want.items():
        assert got[key] == value, f"{what}: {key} differ:\n got  {got[key]}\n want {value}"


def steps_logged(p: Plugin, since: int) -> list[str]:
    text = p.driver.log_path.read_bytes()[since:].decode(errors="replace")
    return [m.group(1) for line in text.splitlines() if (m := STEP_LINE.search(line))]


def log_size(p: Plugin) -> int:
    return p.driver.log_path.stat().st_size


def post(p: Plugin, verb: str, body: Any) -> tuple[int, Any]:
    return p.call(verb, body)


# -- the reference run ----------------------------------------------------------------


@dataclass
class Reference:
    states: list[dict[str, Any]] = field(default_factory=list)  # states[i]: after CALLS[:i]
    answers: list[Any] = field(default_factory=list)
    traces: list[list[str]] = field(default_factory=list)


def reference_run(root: Path) -> Reference:
    ref = Reference()
    p = start_plugin(root)
    try:
        p.wait_ready()
        ref.states.append(state(p))
        for verb, body in CALLS:
            since = log_size(p)
            ref.answers.append(p.ok(verb, body))
            ref.traces.append(steps_logged(p, since))
            s = state(p)
            check_invariants(s)
            ref.states.append(s)
        assert not ref.states[-1]["records"] and not ref.states[-1]["links"]
    finally:
        stop_plugin(p)
    return ref


def restarts_change_nothing(ref: Reference, root: Path) -> None:
    """The lifecycle again, in another namespace, restarting after every call: the same
    states (so they do not depend on the namespace) and a fresh reconciliation of each
    changes nothing (so a state equal to one of them is one a restart leaves alone)."""
    p = start_plugin(root)
    try:
        p.wait_ready()
        for i, (verb, body) in enumerate(CALLS):
            assert p.ok(verb, body) == ref.answers[i]
            assert_same(state(p), ref.states[i + 1], f"after call {i} {verb}")
            p.restart()
            assert_same(state(p), ref.states[i + 1], f"restart after call {i} {verb}")
    finally:
        stop_plugin(p)


# -- one case -------------------------------------------------------------------------


def crash_at_start(p: Plugin, point: str) -> None:
    """Start with the hook: the start-up reconciliation must die at ``point``."""
    p.driver.extra_env["PYOVERLAY_FAIL_STEP"] = "crash:" + point
    since = log_size(p)
    try:
        p.driver.start()
        p.wait_ready()
    except Exception:  # it died before or after it listened
        pass
    assert_killed(p, point, since)


def assert_killed(p: Plugin, point: str, since: int) -> None:
    p.close()
    proc = p.driver._proc  # the process object: the only witness of how it died
    assert proc is not None
    proc.wait(15)
    assert proc.returncode == -9, f"the driver exited with {proc.returncode}, not by SIGKILL at {point!r}"
    seen = steps_logged(p, since)
    assert seen and seen[-1] == point, f"died at {seen[-1:]} instead of {point!r}"
    assert [s for s in seen if matches("crash:" + point, s)] == [point], "the hook matched an earlier point"


def restart_clean(p: Plugin) -> None:
    p.driver.extra_env.pop("PYOVERLAY_FAIL_STEP", None)
    p.driver.start()
    p.wait_ready()


def run_calls(p: Plugin, ref: Reference, start: int, stop: int) -> None:
    for i in range(start, stop):
        verb, body = CALLS[i]
        assert p.ok(verb, body) == ref.answers[i], f"call {i} {verb}: another answer than the reference's"


def crash_in_call(p: Plugin, ref: Reference, point: str, k: int) -> None:
    p.driver.extra_env["PYOVERLAY_FAIL_STEP"] = "crash:" + point
    p.driver.start()
    p.wait_ready()
    run_calls(p, ref, 0, k)
    since = log_size(p)
    verb, body = CALLS[k]
    try:
        status, _ = post(p, verb, body)
    except Exception:  # a transport error, as dockerd sees it
        status = None
    assert status is None, f"{verb} answered {status} although the driver was to die at {point!r}"
    assert_killed(p, point, since)


def tamper(p: Plugin, how: str) -> None:
    if how == "bridge lost":  # as after a reboot: the kernel forgot, the store did not
        p.ns.ip("link", "del", BRIDGE)
    elif how == "orphaned veth":  # what a crash between creating a veth and its record leaves
        p.ns.ip("link", "add", "poh0123456789ab", "type", "veth", "peer", "name", "poc0123456789ab")
    else:
        raise AssertionError(how)


_ns = itertools.count()


def new_plugin(root: Path) -> Plugin:
    """A namespace and a driver process not started yet."""
    ns = Netns(f"pox{os.getpid() % 100000}c{next(_ns)}").create()
    root.mkdir(parents=True, exist_ok=True)
    return Plugin(ns, DriverProcess(ns, root, root / "state", root / "driver.log"), root)


def run_case(case: Case, ref: Reference, root: Path) -> None:
    p = new_plugin(root)
    try:
        k = case.call
        if case.first is not None:
            crash_in_call(p, ref, case.first, k)
        elif case.tamper is not None:
            restart_clean(p)
            run_calls(p, ref, 0, k)
            p.close()
            p.driver.stop()
            tamper(p, case.tamper)
        if case.at_start:
            crash_at_start(p, case.point)
        else:
            crash_in_call(p, ref, case.point, k)
        restart_clean(p)
        after = state(p)
        check_invariants(after)
        done = case.tamper is None and after == ref.states[k + 1]
        if not done:
            assert_same(after, ref.states[k], f"after the crash at {case.point!r}: neither before nor after call {k}")
        if case.tamper is not None:
            run_calls(p, ref, k, len(CALLS))  # the driver is as if nothing happened: go on
        else:
            verb, body = CALLS[k]
            # dockerd's own retry: an empty body, refused; it changes nothing
            assert post(p, verb, None)[0] == 400
            assert_same(state(p), after, "after the refused empty-body retry")
            # a retry with the body: the reference's answer and state
            assert p.ok(verb, body) == ref.answers[k], f"the retried {verb} answers otherwise than the reference"
            assert_same(state(p), ref.states[k + 1], f"after the retried {verb}")
            run_calls(p, ref, k + 1, len(CALLS))
        assert_same(state(p), ref.states[-1], "at the end of the lifecycle (nothing left)")
    finally:
        stop_plugin(p)


# -- the campaign: every case, concurrently --------------------------------------------

REF_HOLDER: list[Reference] = []


@dataclass
class Outcome:
    error: str | None
    seconds: float


@pytest.fixture(scope="module")
def campaign(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    selected = {item.callspec.params["case"].id for item in request.session.items
                if hasattr(item, "callspec") and isinstance(item.callspec.params.get("case"), Case)}
    REF_HOLDER[:] = [reference_run(tmp_path_factory.mktemp("reference"))]
    cases: list[Case | None] = [None, *(c for c in CASES if c.id in selected)]  # None: the restarts

    def one(case: Case | None) -> tuple[str, Outcome]:
        t0 = time.monotonic()
        try:
            if case is None:
                restarts_change_nothing(REF_HOLDER[0], tmp_path_factory.mktemp("restarts"))
            else:
                run_case(case, REF_HOLDER[0], tmp_path_factory.mktemp("case"))
            error = None
        except BaseException:  # reported by the case's own test
            error = traceback.format_exc()
        return RESTARTS if case is None else case.id, Outcome(error, time.monotonic() - t0)

    workers = int(os.environ.get("PYOVERLAY_CRASH_WORKERS", "3"))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield dict(pool.map(one, cases))


RESTARTS = "restarts"


def test_a_restart_changes_nothing(campaign: dict[str, Outcome]) -> None:
    outcome = campaign[RESTARTS]
    assert outcome.error is None, outcome.error


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_crash(campaign: dict[str, Outcome], case: Case) -> None:
    outcome = campaign[case.id]
    assert outcome.error is None, outcome.error


# -- coverage: every point of the code has a case ---------------------------------------

NAME = re.compile(r"""(?:checkpoint\(|steps\.run\(\s*)f?"([^"]+)\"""")


def _templates() -> dict[str, re.Pattern[str]]:
    found: dict[str, re.Pattern[str]] = {}
    for path in sorted((REPO / "driver").rglob("*.py")):
        if path.name in MODES_NOT_HERE or path.name == "steps.py":
            continue
        for name in NAME.findall(path.read_text()):
            pattern = ".+".join(re.escape(part) for part in re.split(r"\{[^}]*\}", name))
            found[f"{path.relative_to(REPO)}: {name}"] = re.compile(pattern)
    return found


def test_every_point_is_covered(campaign: dict[str, Outcome]) -> None:
    ref = REF_HOLDER[0]
    points = {c.point for c in CASES} | {c.first for c in CASES if c.first}
    # every point the lifecycle's target calls pass is a case, and every verb case is one of them
    for i in TARGETS:
        missing = set(ref.traces[i]) - points
        assert not missing, f"call {i} {CALLS[i][0]} passes points without a case: {sorted(missing)}"
    for c in CASES:
        if not c.at_start:
            assert c.point in ref.traces[c.call], f"{c.point!r} is not a point of call {c.call} {CALLS[c.call][0]}"
    # every point named in the code is reached by a case (or is listed, with why, as not here)
    templates = _templates()
    assert len(templates) > 20, templates
    for where, pattern in templates.items():
        hit = any(pattern.fullmatch(n) or pattern.fullmatch(n.partition(": ")[2]) for n in points)
        excused = any(key in where for key in NOT_HERE)
        assert hit or excused, f"no crash case for the point {where!r}"


