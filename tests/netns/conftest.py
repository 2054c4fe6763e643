from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.lab import Netns
from tests.plugin import Plugin

_n = itertools.count()


@dataclass
class Sandboxes:
    """Namespaces standing in for containers: what libnetwork does with SrcName, by hand."""

    plugin: Plugin
    made: list[Netns] = field(default_factory=list)

    def attach(self, src_name: str, cidr: str, gateway: str | None = None, ifname: str = "eth0") -> Netns:
        ns = Netns(f"{self.plugin.ns.name}s{next(_n)}").create()
        self.made.append(ns)
        self.plugin.ns.ip("link", "set", src_name, "netns", ns.name)
        ns.ip("link", "set", src_name, "name", ifname)
        ns.addr_add(ifname, cidr)
        ns.set_up(ifname)
        if gateway:
            ns.ip("route", "add", "default", "via", gateway)
        return ns

    def cleanup(self) -> None:
        for ns in self.made:
            ns.delete()
        self.made.clear()


@pytest.fixture
def sandboxes(plugin: Plugin) -> Iterator[Sandboxes]:
    s = Sandboxes(plugin)
    yield s
    s.cleanup()


def ping(ns: Netns, address: str, count: int = 1) -> bool:
    six = ["-6"] if ":" in address else []
    return ns.run("busybox", "ping", *six, "-c", str(count), "-W", "1", address, check=False).returncode == 0
