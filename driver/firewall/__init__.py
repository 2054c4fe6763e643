"""Firewall rules: rendered from records (rules.py), applied with iptables (iptables.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from driver.firewall.rules import Ruleset


class Applier(Protocol):
    def apply(self, rs: Ruleset) -> None: ...


@dataclass(frozen=True)
class Firewall:
    v4: Applier
    v6: Applier
