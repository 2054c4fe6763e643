"""The firewall rules pyoverlay wants, rendered from its records (pure, no I/O).

Why iptables and not a table of our own in nftables: dockerd (20.10 through 28.x)
programs iptables, on the nf_tables backend, and sets the FORWARD policy to DROP with
br_netfilter on, so even traffic between two ports of one bridge crosses FORWARD. In
nftables a packet must be accepted by *every* base chain on a hook, so an accept in a
separate nft table can never override that DROP; only a rule reached from iptables'
own FORWARD chain can. Everything therefore lives in chains named ``PYOVERLAY-*`` that we
create, fill and delete; the built-in chains get exactly one jump each, placed after
dockerd's ``DOCKER-USER`` jump so the admin's rules there still come first.

Per bridge network, in order (first match wins):

    -o BR ctstate RELATED,ESTABLISHED  ACCEPT   replies to what containers started
    -i BR -o BR                        ACCEPT   container to container (DROP if icc=false)
    -o BR                              DROP     anything else into the network: other
                                                networks, docker0, the outside
    -i BR                              ACCEPT   egress (DROP for --internal)
"""

from __future__ import annotations

from dataclasses import dataclass, field

FORWARD_CHAIN = "PYOVERLAY-FORWARD"


@dataclass(frozen=True)
class Jump:
    table: str
    builtin: str
    chain: str
    match: str = ""

    def rule(self) -> str:
        return " ".join(p for p in (self.match, f"-j {self.chain}") if p)


JUMPS = (Jump("filter", "FORWARD", FORWARD_CHAIN),)


@dataclass(frozen=True)
class BridgeRules:
    """What the firewall needs to know about one bridge network, for one family."""

    bridge: str
    subnets: tuple[str, ...] = ()
    internal: bool = False
    icc: bool = True


@dataclass
class Ruleset:
    """Rules per ``(table, chain)``; an empty ruleset means "remove everything"."""

    chains: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def add(self, table: str, chain: str, rule: str) -> None:
        self.chains.setdefault((table, chain), []).append(rule)

    def is_empty(self) -> bool:
        return not any(self.chains.values())


def render(nets: list[BridgeRules]) -> Ruleset:
    rs = Ruleset()
    for jump in JUMPS:
        rs.chains[(jump.table, jump.chain)] = []
    for net in nets:
        for rule in _forward(net):
            rs.add("filter", FORWARD_CHAIN, rule)
    return rs


def _forward(net: BridgeRules) -> list[str]:
    b = net.bridge
    icc = "ACCEPT" if net.icc else "DROP"
    if net.internal:
        return [f"-i {b} -o {b} -j {icc}", f"-i {b} -j DROP", f"-o {b} -j DROP"]
    return [
        f"-o {b} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        f"-i {b} -o {b} -j {icc}",
        f"-o {b} -j DROP",
        f"-i {b} -j ACCEPT",
    ]
