"""Named network namespaces and the links between them.

Links are always created *inside* a namespace with the peer created directly in
the other one (`ip -n A link add ... peer name ... netns B`), so nothing ever
appears in the host namespace, not even for a moment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .proc import LabError, log, pids_in_namespace, run, terminate_pids

NETNS_DIR = Path("/run/netns")


class Netns:
    """A named netns (`/run/netns/NAME`); commands run in it via `nsenter --net=`."""

    def __init__(self, name: str) -> None:
        if "/" in name or len(name) > 32:
            raise ValueError(f"bad netns name {name!r}")
        self.name = name

    def __repr__(self) -> str:
        return f"Netns({self.name!r})"

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> Netns:
        run(["ip", "netns", "add", self.name])
        self.ip("link", "set", "lo", "up")
        return self

    def pids(self) -> list[int]:
        """Processes currently in this netns."""
        return pids_in_namespace(self.path, "net")

    def delete(self) -> None:
        """Delete the netns; processes still in it are ours (strays) and get killed first.

        A netns with a live process would outlive `ip netns del` invisibly.
        """
        if not self.exists():
            return
        strays = self.pids()
        if strays:
            log.warning("netns %s: killing stray processes %s before delete", self.name, strays)
            terminate_pids(strays, timeout=5.0, what=f"stray in {self.name}")
        run(["ip", "netns", "del", self.name])

    def cmd(self, *args: str | os.PathLike[str]) -> list[str]:
        """argv that runs `args` in this netns (host mount namespace kept, unlike `ip netns exec`)."""
        return ["nsenter", f"--net={self.path}", *(os.fspath(a) for a in args)]

    def run(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run(self.cmd(*args), check=check, timeout=timeout, input=input)

    def popen(self, args: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process in this netns; nsenter execs, so the Popen PID is the process itself."""
        return subprocess.Popen(self.cmd(*args), **kwargs)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", self.name, *args], check=check)

    def ip_json(self, *args: str) -> list[dict[str, Any]]:
        out = run(["ip", "-n", self.name, "-j", *args]).stdout.strip()
        return json.loads(out) if out else []

    def addr_add(self, ifname: str, cidr: str) -> None:
        ipaddress.ip_interface(cidr)  # fail early on a typo, with a clear message
        self.ip("addr", "add", cidr, "dev", ifname)

    def set_up(self, ifname: str) -> None:
        self.ip("link", "set", ifname, "up")

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")


def link_veth(  # noqa: PLR0917 - mirrors `ip link add A type veth peer name B` order
    ns_a: Netns,
    ifname_a: str,
    ns_b: Netns,
    ifname_b: str,
    addr_a: str | None = None,
    addr_b: str | None = None,
    *,
    mtu: int | None = None,
) -> None:
    """veth pair `ns_a:ifname_a <-> ns_b:ifname_b`, both up, optional CIDR addresses."""
    if ns_a.name == ns_b.name:
        raise LabError("link_veth needs two different namespaces")
    extra = ["mtu", str(mtu)] if mtu else []
    ns_a.ip("link", "add", ifname_a, *extra, "type", "veth", "peer", "name", ifname_b, *extra, "netns", ns_b.name)
    for ns, ifname, addr in ((ns_a, ifname_a, addr_a), (ns_b, ifname_b, addr_b)):
        if addr:
            ns.addr_add(ifname, addr)
        ns.set_up(ifname)


def add_bridge(ns: Netns, name: str, addr: str | None = None, ports: Sequence[str] = ()) -> None:
    """Linux bridge in `ns`, optional address, `ports` enslaved; all up."""
    ns.ip("link", "add", name, "type", "bridge")
    for port in ports:
        ns.ip("link", "set", port, "master", name, "up")
    if addr:
        ns.addr_add(name, addr)
    ns.set_up(name)
