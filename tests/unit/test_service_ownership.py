"""Who deletes a shared device: pure record logic of the network service."""

from __future__ import annotations

from driver.firewall import Firewall
from driver.firewall.rules import Ruleset
from driver.network.options import NetworkConfig
from driver.network.service import NetworkService
from driver.state import NetworkRecord, Repo
from driver.store.memory import MemoryStore


class NoFirewall:
    def apply(self, rs: Ruleset) -> None:
        pass


class RecordingMode:
    """Stands in for macvlan: networks on one parent share it; deletions are recorded."""

    def __init__(self) -> None:
        self.deleted: list[tuple[str, bool]] = []

    def shares_device(self, net: NetworkRecord, other: NetworkRecord) -> bool:
        return net.config.parent == other.config.parent

    def delete_network(self, net: NetworkRecord) -> None:
        self.deleted.append((net.id, net.owns_device))


def net(nid: str, parent: str, owns: bool) -> NetworkRecord:
    return NetworkRecord(id=nid, status="ready", owns_device=owns,
                         config=NetworkConfig(mode="macvlan", parent=parent))


def test_a_created_vlan_passes_to_the_network_still_using_it() -> None:
    repo = Repo(MemoryStore())
    mode = RecordingMode()
    svc = NetworkService(repo, {"macvlan": mode}, Firewall(NoFirewall(), NoFirewall()))  # type: ignore[dict-item]
    for rec in (net("a", "eth1.10", True), net("b", "eth1.10", False), net("c", "eth1.20", False)):
        repo.put_network(rec)
    svc.delete_network("a")
    assert mode.deleted == [("a", False)], "a must not delete eth1.10 while b uses it"
    b = repo.network("b")
    assert b is not None and b.owns_device
    svc.delete_network("b")
    assert mode.deleted[-1] == ("b", True), "the last user deletes it"
    svc.delete_network("c")
    assert mode.deleted[-1] == ("c", False)
