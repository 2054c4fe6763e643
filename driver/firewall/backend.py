"""Which iptables backend to program: the one dockerd uses, found, not assumed.

Rules written through iptables-nft live in the kernel's nf_tables, rules written through
iptables-legacy in the old x_tables, and each ``*-save`` shows only its own. A driver on
the other backend than dockerd's programs rules that look fine to itself and fail in
practice (weaveworks/weave#3465): legacy's tables and nf_tables' base chains are *both*
traversed, so Docker's DROP policy in one still drops what we accept in the other.

So, as kube-proxy and weave do: read both, and take the one holding dockerd's chains
(the one with more of them, should both hold some). Before dockerd has written anything
(the driver starts first), or when neither backend's binaries exist, it is the one plain
``iptables`` is (``iptables -V`` says which); the choice is made again at the next apply
until dockerd's chains show up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

BackendName = Literal["nft", "legacy", "default"]


@dataclass(frozen=True)
class Backend:
    name: BackendName
    save: str
    restore: str


def candidates(prefix: str, which: Callable[[str], str | None]) -> dict[BackendName, Backend]:
    """The backends whose binaries exist, for ``iptables`` or ``ip6tables``."""
    out: dict[BackendName, Backend] = {}
    for name in ("nft", "legacy"):
        save, restore = f"{prefix}-{name}-save", f"{prefix}-{name}-restore"
        if which(save) and which(restore):
            out[name] = Backend(name, save, restore)
    if which(f"{prefix}-restore"):
        out["default"] = Backend("default", f"{prefix}-save", f"{prefix}-restore")
    return out


def default_of(version: str) -> BackendName:
    """``iptables v1.8.9 (nf_tables)`` → nft; ``(legacy)`` → legacy; anything else: unknown."""
    if "(nf_tables)" in version:
        return "nft"
    if "(legacy)" in version:
        return "legacy"
    return "default"


def choose(
    counts: Mapping[BackendName, int], default: BackendName, current: BackendName | None = None
) -> tuple[BackendName, bool]:
    """The backend holding most of dockerd's rules, and whether any did (else: ``current``,
    then ``default``: a flush of every chain must not move our rules elsewhere)."""
    found = {name: n for name, n in counts.items() if n > 0}
    if found:
        return max(found, key=lambda name: (found[name], name == default)), True
    return current or default, False
