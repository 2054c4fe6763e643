"""Read-only checks for leftovers: links, rules, namespaces, mounts, processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .netns import NETNS_DIR, Netns
from .proc import pids_alive

__all__ = ["Link", "iptables_save", "links", "mounts_under", "netns_list", "pids_alive"]


@dataclass(frozen=True)
class Link:
    name: str
    kind: str  # "" for plain devices (lo), else veth, bridge, vxlan, macvlan, ...
    master: str | None
    up: bool
    index: int


def links(ns: Netns) -> list[Link]:
    """All links in `ns` (from `ip -d -j link show`)."""
    out = []
    for ln in ns.ip_json("-d", "link", "show"):
        info = ln.get("linkinfo") or {}
        out.append(
            Link(
                name=ln["ifname"],
                kind=info.get("info_kind", ""),
                master=ln.get("master"),
                up="UP" in ln.get("flags", []),
                index=ln["ifindex"],
            )
        )
    return out


def iptables_save(ns: Netns, v6: bool = False, table: str | None = None) -> str:
    """`iptables-save` run in `ns` with the host's iptables (use Engine.iptables_save for 28.5's view)."""
    args = ["ip6tables-save" if v6 else "iptables-save"]
    if table:
        args += ["-t", table]
    return ns.run(*args).stdout


def netns_list(prefix: str = "") -> list[str]:
    """Named netns (as in `ip netns list`), optionally only those starting with `prefix`."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def mounts_under(path: str | os.PathLike[str]) -> list[str]:
    """Mount points in this process's mount namespace at or below `path`."""
    root = os.fspath(Path(path))
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            # Field 5 is the mount point; spaces are escaped as \040.
            mp = line.split()[4].replace("\\040", " ")
            if mp == root or mp.startswith(root.rstrip("/") + "/"):
                found.append(mp)
    return found
