"""The firewall rules pyoverlay wants, rendered from its records (pure, no I/O).

Why iptables and not a table of our own in nftables: dockerd (20.10 through 28.x)
programs iptables (nf_tables or legacy backend: driver.firewall.backend finds which) and
may set the FORWARD policy to DROP. In nftables a packet must be accepted by *every* base
chain on a hook, so an accept in a separate nft table can never override that DROP; only
a rule reached from iptables' own FORWARD chain can. Everything therefore lives in chains
named ``PYOVERLAY-*`` that we create, fill and delete; each built-in chain gets exactly one
jump to ours.

Nothing here depends on where dockerd puts its own rules, nor on its FORWARD policy:

* dockerd 20.10 inserts per-bridge ACCEPTs at the top of filter FORWARD when it creates a
  network, and 28+ re-inserts its ``DOCKER-FORWARD`` jump (``-i br-x -j ACCEPT``) at the
  top every time it starts, so in filter FORWARD Docker's accepts may come before ours.
  Every *drop* is therefore also made in **mangle** FORWARD (PYOVERLAY-GUARD: the same
  three passes with RETURN where filter says ACCEPT), which runs before filter FORWARD
  and which dockerd never touches: a DROP there is final whatever filter says later.
* filter PYOVERLAY-FORWARD is still needed for its ACCEPTs, where a FORWARD policy is
  DROP; its jump goes after ``DOCKER-USER`` (the admin's chain) and is left wherever dockerd
  moves it: its position no longer matters for isolation.
* Traffic from our networks *into* Docker's bridges: 20.10 protects its bridges only by
  its DROP policy, which our egress ACCEPT would override. mangle PYOVERLAY-ISOLATION
  drops it: one rule per Docker bridge, named from Docker's own rules
  (driver.firewall.saved), refreshed when they change.

filter PYOVERLAY-FORWARD, in three passes over the bridge networks (first match wins):

 1. -o BR ctstate RELATED,ESTABLISHED        ACCEPT  replies to what containers started
    -o BR -d CTR --dport P ctstate DNAT      ACCEPT  published ports (also hairpin)
    -i BR -o BR                              ACCEPT  container to container (DROP: icc=false)
 2. -o BR                                    DROP    anything else into a network: other
                                                     networks, docker0, the outside
 3. -i BR ctdir REPLY, not DNAT              DROP    answers to connections someone else
                                                     forced in (see below)
    -i BR                                    ACCEPT  egress (DROP for --internal)

mangle PYOVERLAY-GUARD: the same with RETURN for ACCEPT, and before egress
    -i BR                                    PYOVERLAY-ISOLATION
mangle PYOVERLAY-ISOLATION (entered only from our bridges):
    ctstate DNAT                             RETURN  a port Docker published, via the host
    -o DOCKER-BRIDGE                         DROP    one per bridge of Docker's

Every network's DROP comes before any network's egress ACCEPT, so traffic from one
network to another is dropped rather than accepted as the first network's egress. The
reply-direction DROP stops answers to connections something forced in past our chain.

raw PYOVERLAY-PREROUTING runs before any filter rule, so it holds whatever the order in
FORWARD: dockerd 20.10 inserts its per-bridge ACCEPTs (``-i br-x ! -o br-x``, ``-o br-x
ESTABLISHED``) at the top, ahead of our jump, which would let a container on one of
Docker's bridges talk to ours. Here a packet addressed to one of our subnets that did
not come in on that network's bridge is dropped (as Docker 28 does for its own). It is
safe because raw runs before NAT: published-port traffic is still addressed to the host,
and answers to masqueraded egress are too. Not for networks with masquerading off, whose
answers do arrive addressed to the container (mangle covers those; raw, kept, drops the
others before conntrack or NAT spend anything on them). It also drops 127.0.0.0/8 arriving from a
bridge (route_localnet, which loopback publishing needs, would otherwise expose the
host's localhost to containers).

nat PYOVERLAY-DNAT (from PREROUTING and OUTPUT, for local destinations): one DNAT per
published port. nat PYOVERLAY-POSTROUTING: masquerade egress, the host's own traffic to a
published port (loopback needs a local source rewritten), and a container reaching its
own published port (hairpin), whose reply would otherwise never come back through NAT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FORWARD_CHAIN = "PYOVERLAY-FORWARD"  # filter: what overrides a DROP policy
GUARD_CHAIN = "PYOVERLAY-GUARD"  # mangle: every drop again, before dockerd's accepts in filter
ISOLATION_CHAIN = "PYOVERLAY-ISOLATION"  # mangle: from our bridges into Docker's
DNAT_CHAIN = "PYOVERLAY-DNAT"
POSTROUTING_CHAIN = "PYOVERLAY-POSTROUTING"
RAW_CHAIN = "PYOVERLAY-PREROUTING"
PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}


@dataclass(frozen=True)
class Jump:
    table: str
    builtin: str
    chain: str
    match: str = ""
    first: bool = True  # insert near the top (after DOCKER-USER) rather than append

    def rule(self) -> str:
        return " ".join(p for p in (self.match, f"-j {self.chain}") if p)


JUMPS = (
    Jump("filter", "FORWARD", FORWARD_CHAIN),
    Jump("mangle", "FORWARD", GUARD_CHAIN),
    Jump("nat", "PREROUTING", DNAT_CHAIN, "-m addrtype --dst-type LOCAL", first=False),
    Jump("nat", "OUTPUT", DNAT_CHAIN, "-m addrtype --dst-type LOCAL", first=False),
    Jump("nat", "POSTROUTING", POSTROUTING_CHAIN, first=False),
    Jump("raw", "PREROUTING", RAW_CHAIN),
)


@dataclass(frozen=True)
class Published:
    """One published port, resolved: a concrete host port and the container's address."""

    proto: str
    host_ip: str | None  # None: every local address of the family
    host_port: int
    ctr_ip: str
    ctr_port: int


@dataclass(frozen=True)
class BridgeRules:
    """What the firewall needs to know about one bridge network, for one family."""

    bridge: str
    subnets: tuple[str, ...] = ()
    internal: bool = False
    icc: bool = True
    masquerade: bool = True
    published: tuple[Published, ...] = ()


@dataclass
class Ruleset:
    """Rules per ``(table, chain)``; an empty ruleset means "remove everything"."""

    chains: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def add(self, table: str, chain: str, rule: str) -> None:
        self.chains.setdefault((table, chain), []).append(rule)

    def is_empty(self) -> bool:
        return not any(self.chains.values())


# Our chains that no built-in chain jumps to (declared, filled and deleted with the others).
INNER_CHAINS = (("mangle", ISOLATION_CHAIN),)


def our_chains() -> list[tuple[str, str]]:
    return list(dict.fromkeys([*((j.table, j.chain) for j in JUMPS), *INNER_CHAINS]))


def render(nets: list[BridgeRules], v6: bool = False) -> Ruleset:
    """What the records want; the isolation chain is filled later, from what is installed
    (``with_isolation``)."""
    rs = Ruleset()
    for key in our_chains():
        rs.chains[key] = []
    for forward_pass in range(3):
        for net in nets:
            for rule in _forward(net)[forward_pass]:
                rs.add("filter", FORWARD_CHAIN, rule)
            for rule in _forward(net, mangle=True)[forward_pass]:
                rs.add("mangle", GUARD_CHAIN, rule)
    for net in nets:
        for rule in _raw(net, v6):
            rs.add("raw", RAW_CHAIN, rule)
        if net.internal:
            continue
        for pub in net.published:
            rs.add("nat", DNAT_CHAIN, _dnat(pub, v6))
        for rule in _postrouting(net):
            rs.add("nat", POSTROUTING_CHAIN, rule)
    return rs


def _match(pub: Published) -> str:
    return f"-p {pub.proto} -m {pub.proto} --dport {pub.ctr_port}"


def with_isolation(rs: Ruleset, docker_bridges: tuple[str, ...]) -> Ruleset:
    """``rs`` with the isolation chain filled for Docker's bridges (none when ``rs`` is empty)."""
    if rs.is_empty():
        return rs
    out = Ruleset({key: list(rules) for key, rules in rs.chains.items()})
    out.chains[("mangle", ISOLATION_CHAIN)] = ["-m conntrack --ctstate DNAT -j RETURN"] + [
        f"-o {bridge} -j DROP" for bridge in docker_bridges
    ]
    return out


def _forward(net: BridgeRules, mangle: bool = False) -> tuple[list[str], list[str], list[str]]:
    """The network's rules for each of the three passes (filter, or mangle's drops)."""
    b = net.bridge
    ok = "RETURN" if mangle else "ACCEPT"
    icc = f"-i {b} -o {b} -j {ok if net.icc else 'DROP'}"
    if net.internal:
        return [icc], [f"-o {b} -j DROP"], [f"-i {b} -j DROP"]
    published = [
        f"-d {p.ctr_ip} -o {b} {_match(p)} -m conntrack --ctstate DNAT -j {ok}" for p in net.published
    ]
    accept = [f"-o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j {ok}", *published, icc]
    egress = [f"-i {b} -m conntrack --ctdir REPLY ! --ctstate DNAT -j DROP", f"-i {b} -j {ok}"]
    if mangle:
        egress.insert(1, f"-i {b} -j {ISOLATION_CHAIN}")
    return accept, [f"-o {b} -j DROP"], egress


def _raw(net: BridgeRules, v6: bool) -> list[str]:
    b = net.bridge
    rules = [] if v6 or net.internal else [f"-i {b} -d 127.0.0.0/8 -j DROP"]
    if net.masquerade or net.internal:
        rules += [f"-d {subnet} ! -i {b} -j DROP" for subnet in net.subnets]
    return rules


def _dnat(pub: Published, v6: bool) -> str:
    dest = f"[{pub.ctr_ip}]:{pub.ctr_port}" if v6 else f"{pub.ctr_ip}:{pub.ctr_port}"
    only = f"-d {pub.host_ip} " if pub.host_ip else ""
    return f"{only}-p {pub.proto} -m {pub.proto} --dport {pub.host_port} -j DNAT --to-destination {dest}"


def _postrouting(net: BridgeRules) -> list[str]:
    b = net.bridge
    rules = [f"-o {b} -m addrtype --src-type LOCAL -j MASQUERADE"] if net.published else []
    rules += [f"-s {p.ctr_ip} -d {p.ctr_ip} {_match(p)} -j MASQUERADE" for p in net.published]
    if net.masquerade:
        rules += [f"-s {subnet} ! -o {b} -j MASQUERADE" for subnet in net.subnets]
    return rules
