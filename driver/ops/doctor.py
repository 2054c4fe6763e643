"""``pyoverlay doctor``'s checks: each reads what it needs through a callable it is given
(so each is tested with canned answers) and says ok, warn or fail, with the fix.

Read-only, all of them: nothing here writes a sysctl, a rule or a file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Level = Literal["ok", "warn", "fail"]
Runner = Callable[[list[str]], tuple[int, str]]  # argv → (exit status, stdout + stderr)
SysctlReader = Callable[[str], str | None]  # "net/ipv4/ip_forward" → value, None if absent

OUR_JUMP = "-A FORWARD -j PYOVERLAY-FORWARD"


@dataclass(frozen=True)
class Check:
    level: Level
    name: str
    what: str
    fix: str = ""

    def line(self) -> str:
        fix = f" (fix: {self.fix})" if self.fix and self.level != "ok" else ""
        return f"{self.level:<4}  {self.name}: {self.what}{fix}"


@dataclass(frozen=True)
class DriverFacts:
    """What the running driver said about itself, if it answered."""

    networks: int
    ipv6_networks: int
    reconcile_failures: list[str]


def dockerd(version: Callable[[], dict[str, Any]], where: str) -> Check:
    try:
        info = version()
    except Exception as err:
        return Check("fail", "dockerd", f"no answer at {where}: {type(err).__name__}: {err}",
                     "start dockerd (systemctl start docker), or point --docker-host at its API")  # fmt: skip
    return Check("ok", "dockerd", f"{info.get('Version', '?')} (API {info.get('ApiVersion', '?')}) at {where}")


def driver_socket(activate: Callable[[], tuple[int, Any]], where: str) -> Check:
    try:
        code, body = activate()
    except Exception as err:
        return Check("fail", "driver", f"no answer on {where}: {getattr(err, 'message', err)}",
                     "start it: pyoverlay serve, systemctl start pyoverlay, or docker plugin enable")  # fmt: skip
    implements = body.get("Implements") if isinstance(body, dict) else None
    if code != 200 or not implements:
        return Check("fail", "driver", f"{where} answered Plugin.Activate with {code} {body}",
                     "is another program serving on that socket? check --socket")  # fmt: skip
    return Check("ok", "driver", f"answers on {where} (implements {', '.join(implements)})")


def reconciliation(facts: DriverFacts | None) -> Check | None:
    if facts is None or not facts.reconcile_failures:
        return None
    return Check("warn", "reconciliation", f"{len(facts.reconcile_failures)} object(s) not restored at start: "
                 + "; ".join(facts.reconcile_failures),
                 "see the driver's log; a restart of the driver retries")  # fmt: skip


def firewall_backend(run: Runner) -> Check:
    code, out = run(["iptables", "-V"])
    if code != 0:
        return Check("fail", "firewall", f"iptables does not run ({out.strip() or code})",
                     "install iptables: the driver programs NAT, ports and isolation with it")  # fmt: skip
    text = out.strip()
    backend = "nf_tables" if "nf_tables" in text else "legacy" if "legacy" in text else "unknown"
    return Check("ok", "firewall", f"{text}: the {backend} backend")


def forward_jump(rules: str | None, facts: DriverFacts | None) -> Check:
    """Our FORWARD jump exists, after DOCKER-USER (the admin's rules come first)."""
    if rules is None:
        return Check("warn", "forward jump", "cannot read the FORWARD chain", "run doctor as root")
    appends = [line for line in rules.splitlines() if line.startswith("-A FORWARD ")]
    if OUR_JUMP not in appends:
        if facts is None:
            return Check("warn", "forward jump", "FORWARD has no jump to PYOVERLAY-FORWARD; the driver did not "
                         "answer, so whether it needs one is unknown", "start the driver")  # fmt: skip
        if facts.networks == 0:
            return Check("ok", "forward jump", "none, and none needed: the driver has no networks yet")
        return Check("fail", "forward jump", f"FORWARD has no jump to PYOVERLAY-FORWARD: the driver's "
                     f"{facts.networks} network(s) get no forwarding (dockerd's DROP policy applies)",
                     "the driver puts it back at its next firewall check; if it stays missing, restart the "
                     "driver (it adds its jumps at start)")  # fmt: skip
    ours = appends.index(OUR_JUMP)
    user = next((i for i, r in enumerate(appends) if r == "-A FORWARD -j DOCKER-USER"), None)
    docker = next((i for i, r in enumerate(appends) if " -j DOCKER" in r and "DOCKER-USER" not in r), None)
    fix = "iptables -D FORWARD -j PYOVERLAY-FORWARD, then restart the driver: it inserts it after DOCKER-USER"
    if user is not None and ours < user:
        return Check("warn", "forward jump", f"rule {ours + 1}, before DOCKER-USER (rule {user + 1}): the "
                     "admin's DOCKER-USER rules no longer come first", fix)  # fmt: skip
    if docker is not None and ours > docker:
        # Where dockerd puts it after its own restart, and harmless: every drop of ours is
        # also in mangle FORWARD, which runs first (driver/firewall/rules.py).
        target = appends[docker].split(" -j ")[-1]
        return Check("ok", "forward jump", f"rule {ours + 1}, after dockerd's {target} (rule {docker + 1}), "
                     "where dockerd puts it when it starts; isolation does not depend on it")  # fmt: skip
    where = [f"rule {ours + 1}"]
    where += [f"after DOCKER-USER (rule {user + 1})"] if user is not None else []
    where += [f"before {appends[docker].split(' -j ')[-1]} (rule {docker + 1})"] if docker is not None else []
    return Check("ok", "forward jump", ", ".join(where))


def forward_policy(rules: str | None, dockerd_up: bool) -> Check | None:
    if rules is None:
        return None
    if "-P FORWARD DROP" not in rules.splitlines():
        return Check("ok", "forward policy", "ACCEPT")
    if dockerd_up:
        return Check("ok", "forward policy", "DROP, dockerd's (pyoverlay's chain accepts its own networks)")
    return Check("warn", "forward policy", "DROP, left by dockerd (it sets DROP at start and never restores it): "
                 "anything routed through this host other than pyoverlay's networks is dropped",
                 "iptables -P FORWARD ACCEPT if this host should route other traffic; dockerd sets DROP again "
                 "when it starts")  # fmt: skip


def forwarding(read: SysctlReader, facts: DriverFacts | None) -> list[Check]:
    out = []
    v4 = read("net/ipv4/ip_forward")
    if v4 == "1":
        out.append(Check("ok", "ipv4 forwarding", "on"))
    elif facts is None or facts.networks == 0:
        out.append(Check("ok", "ipv4 forwarding", "off: the driver turns it on with its first network"))
    else:
        out.append(Check("fail", "ipv4 forwarding", "off: containers have no egress and published ports do not work",
                         "sysctl -w net.ipv4.ip_forward=1"))  # fmt: skip
    v6 = read("net/ipv6/conf/all/forwarding")
    if v6 == "1":
        out.append(Check("ok", "ipv6 forwarding", "on"))
    elif facts is not None and facts.ipv6_networks:
        out.append(Check("warn", "ipv6 forwarding", f"off, with {facts.ipv6_networks} IPv6 network(s): their "
                         "containers have no IPv6 egress", "sysctl -w net.ipv6.conf.all.forwarding=1"))  # fmt: skip
    else:
        out.append(Check("ok", "ipv6 forwarding", "off (needed by IPv6 networks only; the driver turns it on "
                         "with the first)"))  # fmt: skip
    return out


def br_netfilter(read: SysctlReader) -> Check:
    value = read("net/bridge/bridge-nf-call-iptables")
    if value is None:
        return Check("warn", "br_netfilter", "not loaded: traffic within a bridge skips iptables, so "
                     "icc=false is not enforced", "modprobe br_netfilter (dockerd loads it at start)")  # fmt: skip
    if value != "1":
        return Check("fail", "br_netfilter", f"bridge-nf-call-iptables is {value}: traffic within a bridge "
                     "skips iptables, so icc=false is not enforced and containers cannot reach published ports "
                     "of their own network", "sysctl -w net.bridge.bridge-nf-call-iptables=1 (it is per network "
                     "namespace)")  # fmt: skip
    return Check("ok", "br_netfilter", "bridge-nf-call-iptables is 1")


def firewalld(active: Callable[[], bool | None]) -> Check:
    state = active()
    if state is None:
        return Check("ok", "firewalld", "not installed")
    if not state:
        return Check("ok", "firewalld", "not running")
    return Check("warn", "firewalld", "running: a reload (firewall-cmd --reload) can remove other programs' "
                 "iptables rules, pyoverlay's included",
                 "start pyoverlay after firewalld (contrib/pyoverlay.service does); after a reload, check "
                 "that the forward jump is back (pyoverlay doctor)")  # fmt: skip


def etcd(get: Callable[[], object], where: str, clock: Callable[[], float] = time.perf_counter) -> Check:
    began = clock()
    try:
        get()
    except Exception as err:
        return Check("fail", "etcd", f"no answer from {where}: {getattr(err, 'message', err)}",
                     "check --etcd-endpoints and the TLS files, and that etcd runs (etcdctl endpoint health)")
    ms = (clock() - began) * 1000
    if ms > 500:
        return Check("warn", "etcd", f"answers, slowly: a read took {ms:.0f} ms ({where})",
                     "a container start waits for etcd: look at etcd's disk and network latency")  # fmt: skip
    return Check("ok", "etcd", f"answers: a read took {ms:.1f} ms ({where})")


def underlay(resolve: Callable[[], tuple[str, str, int]], overhead: dict[int, int]) -> Check:
    try:
        vtep, link, mtu = resolve()
    except Exception as err:
        return Check("fail", "underlay", str(getattr(err, "message", err) or err),
                     "give --advertise-addr an address or interface of this host")  # fmt: skip
    inner = mtu - overhead[6 if ":" in vtep else 4]
    what = f"VTEP {vtep} on {link} (MTU {mtu}): overlay networks get MTU {inner}"
    if inner < 1280:
        return Check("warn", "underlay", f"{what}, too small for IPv6 overlays (1280)",
                     "raise the underlay's MTU")  # fmt: skip
    return Check("ok", "underlay", what)
