"""Reconciliation at start is per object: one broken network does not stop the others."""

from __future__ import annotations

from driver.errors import DriverError
from driver.firewall import Firewall
from driver.firewall.rules import Ruleset
from driver.netlink.adapter import Link
from driver.network.options import NetworkConfig
from driver.network.reconcile import reconcile
from driver.network.service import NetworkService
from driver.state import EndpointRecord, NetworkRecord, Repo
from driver.store.memory import MemoryStore


class CountingFirewall:
    def __init__(self) -> None:
        self.applied = 0

    def apply(self, rs: Ruleset) -> None:
        self.applied += 1


class FlakyMode:
    """Ensuring network "bad" fails, as a macvlan whose parent is gone would."""

    def __init__(self) -> None:
        self.ensured: list[str] = []

    def ensure_network(self, net: NetworkRecord) -> None:
        if net.id == "bad":
            raise DriverError("parent eth9 does not exist")
        self.ensured.append(net.id)

    def endpoint_alive(self, ep: EndpointRecord) -> bool:
        return True

    def device_names(self, net: NetworkRecord) -> set[str]:
        return set()


class NoLinks:
    def links(self) -> list[Link]:
        return []


def test_one_broken_network_does_not_stop_the_others_nor_the_firewall() -> None:
    repo = Repo(MemoryStore())
    for nid in ("bad", "good"):
        repo.put_network(NetworkRecord(id=nid, status="ready", config=NetworkConfig(mode="macvlan", parent="eth9")))
    repo.put_endpoint(EndpointRecord(id="e1", network_id="good", status="ready", host_if="", ctr_if="pome1"))
    mode, fw = FlakyMode(), CountingFirewall()
    svc = NetworkService(repo, {"macvlan": mode}, Firewall(fw, fw))  # type: ignore[dict-item]
    failures = reconcile(svc, NoLinks())  # type: ignore[arg-type]
    assert mode.ensured == ["good"]
    assert failures == ["network bad: parent eth9 does not exist"]
    assert fw.applied == 2, "the firewall (both families) is still rewritten"
    assert repo.network("bad") is not None, "a failure changes nothing: it is retried at the next start"
    assert repo.endpoint("e1") is not None
