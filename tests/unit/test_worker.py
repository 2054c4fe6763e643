"""The worker's promises when a caller stops waiting, and the service's rollback when a
write fails: pure logic (threads and an in-memory store, no kernel)."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from driver.api import models
from driver.errors import StorageError, Unavailable
from driver.firewall import Firewall
from driver.firewall.rules import Ruleset
from driver.network.service import NetworkService
from driver.network.steps import Steps, checkpoint
from driver.state import EndpointRecord, NetworkRecord, Repo
from driver.store.memory import MemoryStore
from driver.worker import GivenUp, Worker, ensure_wanted

NID, EID = "a" * 64, "b" * 64


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker(0.3)
    yield w
    w.shutdown()


def test_a_call_queued_behind_a_slow_one_is_never_run(worker: Worker) -> None:
    release, ran = threading.Event(), []

    def slow() -> None:
        checkpoint("create network 1a2b3c4d5e6f: add bridge")
        release.wait(5)

    async def scenario() -> tuple[str, str]:
        first = asyncio.ensure_future(worker.run(slow))
        await asyncio.sleep(0.05)
        with pytest.raises(Unavailable) as queued:
            await worker.run(ran.append, "queued")
        with pytest.raises(Unavailable) as running:
            await first
        return queued.value.message, running.value.message

    queued, running = asyncio.run(scenario())
    assert re.search(r"busy with slow at 'create network 1a2b3c4d5e6f: add bridge', running for \d+s", queued)
    assert "ran.append" not in queued and "waited 0s and was not run" in queued
    assert running.startswith("slow did not finish within 0s (at 'create network 1a2b3c4d5e6f: add bridge')")
    release.set()
    # The queue moves on, and the cancelled call did not run in the meantime.
    assert asyncio.run(worker.run(lambda: "next")) == "next"
    assert ran == []
    assert worker.busy() is None


def test_a_running_call_learns_its_caller_gave_up(worker: Worker) -> None:
    seen: list[str] = []
    release = threading.Event()

    def create() -> None:
        ensure_wanted("create x")  # still wanted: no error
        release.wait(5)
        try:
            ensure_wanted("create x")
        except GivenUp as err:
            seen.append(err.message)

    async def scenario() -> None:
        with pytest.raises(Unavailable):
            await worker.run(create)

    asyncio.run(scenario())
    release.set()
    assert asyncio.run(worker.run(lambda: 1)) == 1  # after ``create`` finished
    assert seen == ["create x: its caller stopped waiting (the call took too long)"]


def test_ensure_wanted_off_the_worker_is_a_no_op() -> None:
    ensure_wanted("anything")


# -- the service under a failing store -------------------------------------------------


class FailingStore(MemoryStore):
    """Writes fail from the ``fail_at``-th on (a state dir that filled up mid-call)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.fail_at: int | None = None

    def put(self, key: str, value: bytes) -> None:
        self.writes += 1
        if self.fail_at is not None and self.writes >= self.fail_at:
            raise StorageError(f"state directory: cannot save record {key}: No space left on device")
        super().put(key, value)


class NoFirewall:
    def apply(self, rs: Ruleset) -> None:
        pass


class KernelMode:
    """Stands in for bridge mode: what a call created, and what rollback removed."""

    def __init__(self) -> None:
        self.links: set[str] = set()

    def check_coexistence(self, rec: NetworkRecord, other: NetworkRecord) -> None:
        pass

    def prepare_network(self, rec: NetworkRecord) -> None:
        pass

    def create_network(self, rec: NetworkRecord, steps: Steps) -> None:
        steps.run("add bridge", lambda: self.links.add("br"), lambda: self.links.discard("br"))

    def endpoint_names(self, eid: str) -> tuple[str, str]:
        return "h", "c"

    def assigns_mac(self, net: NetworkRecord) -> bool:
        return False

    def check_new_endpoint(self, net: NetworkRecord, eps: list[EndpointRecord]) -> None:
        pass

    def create_endpoint(self, net: NetworkRecord, ep: EndpointRecord, steps: Steps) -> None:
        steps.run("add veth", lambda: self.links.add("veth"), lambda: self.links.discard("veth"))


def _service() -> tuple[NetworkService, FailingStore, KernelMode]:
    store, mode = FailingStore(), KernelMode()
    svc = NetworkService(Repo(store), {"bridge": mode}, Firewall(NoFirewall(), NoFirewall()))  # type: ignore[dict-item]
    return svc, store, mode


def _network_request() -> models.CreateNetworkRequest:
    return models.CreateNetworkRequest(NetworkID=NID, IPv4Data=[models.IPAMData(Pool="10.1.0.0/24")])


@pytest.mark.parametrize("fail_at", [1, 2])  # the "creating" record, the "ready" one
def test_a_network_whose_record_cannot_be_saved_is_rolled_back(fail_at: int) -> None:
    svc, store, mode = _service()
    store.fail_at = fail_at
    with pytest.raises(StorageError, match="No space left on device"):
        svc.create_network(_network_request())
    assert mode.links == set() and svc.repo.networks() == []
    store.fail_at = None
    svc.create_network(_network_request())  # dockerd's retry, once there is room
    assert mode.links == {"br"} and [n.status for n in svc.repo.networks()] == ["ready"]


@pytest.mark.parametrize("fail_at", [1, 2])
def test_an_endpoint_whose_record_cannot_be_saved_is_rolled_back(fail_at: int) -> None:
    svc, store, mode = _service()
    svc.create_network(_network_request())
    store.writes, store.fail_at = 0, fail_at
    req: dict[str, Any] = {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.1.0.2/24"}}
    with pytest.raises(StorageError):
        svc.create_endpoint(models.CreateEndpointRequest.model_validate(req))
    assert mode.links == {"br"} and svc.repo.endpoints() == []
