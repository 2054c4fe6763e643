"""The firewall rules pyoverlay wants, rendered from its records (pure, no I/O).

Why iptables and not a table of our own in nftables: dockerd (20.10 through 28.x)
programs iptables, on the nf_tables backend, and sets the FORWARD policy to DROP with
br_netfilter on, so even traffic between two ports of one bridge crosses FORWARD. In
nftables a packet must be accepted by *every* base chain on a hook, so an accept in a
separate nft table can never override that DROP; only a rule reached from iptables'
own FORWARD chain can. Everything therefore lives in chains named ``PYOVERLAY-*`` that we
create, fill and delete; each built-in chain gets exactly one jump to ours (FORWARD's is
placed after dockerd's ``DOCKER-USER`` jump so the admin's rules there still come first).

filter PYOVERLAY-FORWARD, in three passes over the bridge networks (first match wins):

 1. -o BR ctstate RELATED,ESTABLISHED        ACCEPT  replies to what containers started
    -o BR -d CTR --dport P ctstate DNAT      ACCEPT  published ports (also hairpin)
    -i BR -o BR                              ACCEPT  container to container (DROP: icc=false)
 2. -o BR                                    DROP    anything else into a network: other
                                                     networks, docker0, the outside
 3. -i BR ctdir REPLY, not DNAT              DROP    answers to connections someone else
                                                     forced in (see below)
    -i BR                                    ACCEPT  egress (DROP for --internal)

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
answers do arrive addressed to the container. It also drops 127.0.0.0/8 arriving from a
bridge (route_localnet, which loopback publishing needs, would otherwise expose the
host's localhost to containers).

nat PYOVERLAY-DNAT (from PREROUTING and OUTPUT, for local destinations): one DNAT per
published port. nat PYOVERLAY-POSTROUTING: masquerade egress, the host's own traffic to a
published port (loopback needs a local source rewritten), and a container reaching its
own published port (hairpin), whose reply would otherwise never come back through NAT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FORWARD_CHAIN = "PYOVERLAY-FORWARD"
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


def render(nets: list[BridgeRules], v6: bool = False) -> Ruleset:
    rs = Ruleset()
    for jump in JUMPS:
        rs.chains[(jump.table, jump.chain)] = []
    for forward_pass in range(3):
        for net in nets:
            for rule in _forward(net)[forward_pass]:
                rs.add("filter", FORWARD_CHAIN, rule)
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


def _forward(net: BridgeRules) -> tuple[list[str], list[str], list[str]]:
    """The network's rules for each of the three passes."""
    b = net.bridge
    icc = f"-i {b} -o {b} -j {'ACCEPT' if net.icc else 'DROP'}"
    if net.internal:
        return [icc], [f"-o {b} -j DROP"], [f"-i {b} -j DROP"]
    published = [
        f"-d {p.ctr_ip} -o {b} {_match(p)} -m conntrack --ctstate DNAT -j ACCEPT" for p in net.published
    ]
    accept = [f"-o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", *published, icc]
    egress = [f"-i {b} -m conntrack --ctdir REPLY ! --ctstate DNAT -j DROP", f"-i {b} -j ACCEPT"]
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
