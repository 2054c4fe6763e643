"""Reading ``iptables-save`` output (pure): tables, our chains, Docker's bridges."""

from __future__ import annotations

import re

Saved = dict[str, list[str]]  # table → its chain declarations (":X POLICY [..]") and "-A" rules

# Chains only dockerd writes (DOCKER-USER is the admin's): every interface they name is
# one of Docker's bridges. 20.10 keeps its per-bridge rules in FORWARD itself, where only
# ``-o BR -j DOCKER`` is unmistakably Docker's (an admin's ``-i eth0 -o eth1`` is not).
_DOCKER_CHAINS = re.compile(r"-A (DOCKER-ISOLATION-STAGE-[12]|DOCKER-FORWARD|DOCKER-BRIDGE|DOCKER-CT|DOCKER-INTERNAL) ")
_FORWARD_TO_DOCKER = re.compile(r"-A FORWARD -o (\S+) -j DOCKER$")
_IFACE = re.compile(r"(?:^| )-[io] (\S+)")


def parse(text: str) -> Saved:
    tables: Saved = {}
    current: list[str] = []
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], [])
        elif line.startswith(("-A ", ":")):
            current.append(line)
    return tables


def chain_rules(saved: Saved, table: str, chain: str) -> list[str] | None:
    """The rules of ``chain`` as saved (without "-A CHAIN "); None when it is not declared."""
    lines = saved.get(table, [])
    if not any(line.startswith(f":{chain} ") for line in lines):
        return None
    prefix = f"-A {chain} "
    return [line[len(prefix):] for line in lines if line.startswith(prefix)]


def docker_bridges(saved: Saved) -> tuple[str, ...]:
    """The bridges dockerd's rules name, sorted (wildcards such as ``br-+`` excluded)."""
    found: set[str] = set()
    for line in saved.get("filter", []):
        m = _FORWARD_TO_DOCKER.match(line)
        if m:
            found.add(m.group(1))
        elif _DOCKER_CHAINS.match(line):
            found.update(_IFACE.findall(line))
    return tuple(sorted(name for name in found if not name.endswith("+")))


def docker_rule_count(saved: Saved) -> int:
    """How much of dockerd is in these tables: its chains and the rules in them or jumping to them."""
    return sum(1 for lines in saved.values() for line in lines if line.startswith(":DOCKER") or "-j DOCKER" in line)
