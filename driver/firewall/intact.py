"""Is the firewall we applied still there? (pure; the background check's comparison)

Someone else may flush or rewrite the tables (``iptables -F``, a firewalld reload, a tool
rewriting FORWARD). Our chains must hold exactly the rules we applied and each of our
jumps must be there exactly once.

iptables-save prints rules in its own canonical form (``-d 10.0.0.2/32``, matches
reordered), so what we wrote cannot be compared text for text. The first check after an
apply compares rule *counts* and, when they agree, keeps what it read as the baseline;
later checks compare with that baseline exactly. Where our filter jump sits is not
checked: dockerd moves it on every start, and isolation does not depend on it (rules.py).
"""

from __future__ import annotations

from driver.firewall.rules import JUMPS, Ruleset
from driver.firewall.saved import Saved, chain_rules

Snapshot = dict[tuple[str, str], tuple[str, ...]]


def snapshot(wanted: Ruleset, saved: Saved) -> Snapshot:
    """Our chains as saved (only those ``wanted`` has)."""
    return {key: tuple(chain_rules(saved, *key) or ()) for key in wanted.chains}


def problems(wanted: Ruleset, saved: Saved, baseline: Snapshot | None = None) -> list[str]:
    """What differs from ``wanted`` (empty when intact); nothing to guard when it is empty."""
    if wanted.is_empty():
        return []
    found: list[str] = []
    for (table, chain), rules in wanted.chains.items():
        have = chain_rules(saved, table, chain)
        if have is None:
            found.append(f"{table} {chain} is missing")
        elif len(have) != len(rules):
            found.append(f"{table} {chain} has {len(have)} rules, not {len(rules)}")
        elif baseline is not None and tuple(have) != baseline.get((table, chain)):
            found.append(f"{table} {chain} was changed")
    for jump in JUMPS:
        copies = (chain_rules(saved, jump.table, jump.builtin) or []).count(jump.rule())
        if copies != 1:
            found.append(f"{jump.table} {jump.builtin} has {copies} jumps to {jump.chain}, not 1")
    return found
