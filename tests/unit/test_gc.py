"""Collecting what dockerd no longer has: only after two consecutive reads, never when unsure."""

from __future__ import annotations

from typing import Any

import pytest

from driver.gc import Collector, DockerGC
from driver.network.options import NetworkConfig
from driver.state import AddressRecord, EndpointRecord, NetworkRecord, PoolRecord, Repo
from driver.store.memory import MemoryStore


class FakeDocker:
    """dockerd's view: its networks and their endpoints; ``down`` makes every read fail."""

    def __init__(self) -> None:
        self.nets: dict[str, set[str]] = {}
        self.used: dict[str, set[str]] = {}
        self.down = False

    def addresses(self) -> dict[str, set[str]]:
        return {k: set(v) for k, v in self.used.items()}

    def networks(self) -> set[str]:
        if self.down:
            raise ConnectionRefusedError("no /var/run/docker.sock")
        return set(self.nets)

    def endpoints(self, network_id: str) -> set[str]:
        return set(self.nets[network_id])


def test_collector_needs_two_consecutive_misses() -> None:
    c = Collector()
    assert c.networks({"a", "b"}, {"a"}) == set()
    assert c.networks({"a", "b"}, {"a", "b"}) == set(), "b came back (it was being created)"
    assert c.networks({"a", "b"}, {"a"}) == set()
    assert c.networks({"a", "b"}, {"a"}) == {"b"}
    assert c.networks({"a", "b"}, {"a"}) == set(), "handed over once, then forgotten"


@pytest.fixture
def setup() -> tuple[Repo, FakeDocker]:
    repo = Repo(MemoryStore())
    for nid in ("n1", "n2"):
        repo.put_network(NetworkRecord(id=nid, status="ready", config=NetworkConfig()))
    repo.put_network(NetworkRecord(id="n3", status="creating", config=NetworkConfig()))
    for eid in ("e1", "e2"):
        repo.put_endpoint(EndpointRecord(id=eid, network_id="n1", status="ready", host_if="h", ctr_if="c"))
    return repo, FakeDocker()


def _gc(repo: Repo, docker: FakeDocker) -> tuple[list[tuple[Any, ...]], DockerGC]:
    calls: list[tuple[Any, ...]] = []

    def delete_network(nid: str) -> None: ...

    def delete_endpoint(nid: str, eid: str) -> None: ...

    gc = DockerGC(repo, docker, lambda fn, *a: calls.append((fn.__name__, *a)), delete_network, delete_endpoint)
    return calls, gc


def test_networks_and_endpoints_dockerd_dropped_are_collected(
    setup: tuple[Repo, FakeDocker],
) -> None:
    repo, docker = setup
    calls, gc = _gc(repo, docker)
    docker.nets = {"n1": {"e1"}}  # n2 and e2 forgotten by dockerd; n3 still being created
    gc.scan()
    assert calls == []
    gc.scan()
    assert sorted(calls) == [("delete_endpoint", "n1", "e2"), ("delete_network", "n2")]


def test_nothing_is_collected_while_dockerd_lists_it_or_cannot_be_asked(
    setup: tuple[Repo, FakeDocker],
) -> None:
    repo, docker = setup
    calls, gc = _gc(repo, docker)
    docker.nets = {"n1": {"e1", "e2"}, "n2": set()}
    for _ in range(3):
        gc.scan()
    assert calls == []
    docker.down = True
    with pytest.raises(ConnectionRefusedError):
        gc.scan()
    assert calls == []


def test_addresses_and_pools_nobody_uses_are_released_after_the_grace(tmp_path: object) -> None:
    repo = Repo(MemoryStore())
    repo.put_pool(PoolRecord(id="S/10.9.0.0/24", space="S", pool="10.9.0.0/24"))
    repo.put_pool(PoolRecord(id="S/10.8.0.0/24", space="S", pool="10.8.0.0/24"))  # its network is gone
    for ip, purpose in (("10.9.0.1", "gateway"), ("10.9.0.2", "dynamic"), ("10.9.0.3", "dynamic"),
                        ("10.9.0.4", "dynamic")):  # fmt: skip
        repo.put_address(AddressRecord(pool="S/10.9.0.0/24", address=ip, purpose=purpose))
    repo.put_network(NetworkRecord(id="n1", status="ready", config=NetworkConfig()))
    # .4 is an endpoint of ours dockerd has not recorded yet (a start in flight)
    repo.put_endpoint(EndpointRecord(id="e4", network_id="n1", status="ready", address="10.9.0.4/24",
                                     host_if="h", ctr_if="c"))  # fmt: skip
    docker = FakeDocker()
    docker.nets = {"n1": {"e4"}}
    docker.used = {"10.9.0.0/24": {"10.9.0.2"}}  # the gateway IPAM picked is not shown
    now = [0.0]
    calls: list[tuple[object, ...]] = []

    def release_address(pool_id: str, ip: str) -> None: ...

    def release_pool(pool_id: str) -> None: ...

    gc = DockerGC(repo, docker, lambda fn, *a: calls.append((fn.__name__, *a)), lambda n: None,
                  lambda n, e: None, interval=1, release_address=release_address, release_pool=release_pool,
                  clock=lambda: now[0])  # fmt: skip
    gc.scan()
    now[0] = 9.0
    gc.scan()
    assert calls == [], "not before the grace (10 intervals)"
    now[0] = 10.0
    gc.scan()
    assert sorted(calls) == [("release_address", "S/10.9.0.0/24", "10.9.0.3"), ("release_pool", "S/10.8.0.0/24")]
    docker.used["10.9.0.0/24"].add("10.9.0.3")
    calls.clear()
    now[0] = 30.0
    gc.scan()
    assert calls == []
