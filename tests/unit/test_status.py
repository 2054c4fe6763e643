"""pyoverlay status: collected from records in memory, rendered as a table and as JSON."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from driver.errors import Unavailable
from driver.network.options import NetworkConfig
from driver.ops.activity import Activity
from driver.ops.status import Startup, StatusSource
from driver.ops.status_view import render
from driver.ops.telemetry import DriverMetrics
from driver.state import EndpointRecord, NetworkRecord, PoolRecord, PortBinding, Repo, SubnetRecord
from driver.store.memory import MemoryStore

NID, EID = "ab" * 32, "cd" * 32


def _repo() -> Repo:
    repo = Repo(MemoryStore())
    repo.put_network(NetworkRecord(
        id=NID, status="ready", config=NetworkConfig(icc=False),
        ipv4=[SubnetRecord(pool="10.50.0.0/24", gateway="10.50.0.1/24")],
    ))  # fmt: skip
    repo.put_endpoint(EndpointRecord(
        id=EID, network_id=NID, status="ready", address="10.50.0.2/24", mac="02:42:0a:32:00:02",
        host_if="pohcdcdcdcdcdcd", ctr_if="poccdcdcdcdcdcd",
        ports=[PortBinding(proto=6, port=80, host_port=8080), PortBinding(proto=17, port=53, host_ip="127.0.0.1",
                                                                          host_port=5353)],
    ))  # fmt: skip
    repo.put_pool(PoolRecord(id="PyoverlayLocal/10.50.0.0/24", space="PyoverlayLocal", pool="10.50.0.0/24"))
    return repo


def _source(repo: Repo, startup: Startup | None = None) -> StatusSource:
    return StatusSource(repo, lambda pool: {1, 2}, Activity(DriverMetrics()), startup or Startup(done=True))


def test_collect_shows_networks_endpoints_and_pools() -> None:
    status = _source(_repo()).collect()
    json.dumps(status)  # the wire form
    (net,) = status["networks"]
    assert net | {"endpoints": None} == {
        "id": NID, "status": "ready", "mode": "bridge", "internal": False, "bridge": "po-abababababab",
        "parent": None, "mtu": 1500, "subnets": [{"pool": "10.50.0.0/24", "gateway": "10.50.0.1/24"}],
        "overlay": None, "endpoints": None,
    }  # fmt: skip
    assert net["endpoints"] == [{
        "id": EID, "status": "ready", "address": "10.50.0.2/24", "address_v6": None, "mac": "02:42:0a:32:00:02",
        "interface": "pohcdcdcdcdcdcd", "ports": ["*:8080->80/tcp", "127.0.0.1:5353->53/udp"],
    }]  # fmt: skip
    assert status["pools"] == [{"id": "PyoverlayLocal/10.50.0.0/24", "pool": "10.50.0.0/24", "range": None,
                                "overlay": None, "held": 2, "size": 256}]  # fmt: skip
    assert status["cluster"] is None and status["startup"] == {"reconciled": True, "failures": []}


def test_requests_in_flight_are_shown_but_not_status_itself() -> None:
    source = _source(_repo())
    source.activity.started("NetworkDriver.CreateNetwork")
    source.activity.started("Pyoverlay.Status")
    assert [r["verb"] for r in source.collect()["in_flight"]] == ["NetworkDriver.CreateNetwork"]


def test_snapshot_is_bounded() -> None:
    source = _source(_repo())
    source.timeout = 0.05
    source.collect = lambda: time.sleep(0.3) or {}  # type: ignore[method-assign]
    with pytest.raises(Unavailable, match=r"not collected within 0.05s"):
        asyncio.run(source.snapshot())


SNAPSHOT: dict[str, Any] = {
    "version": "0.1.0", "pid": 42, "uptime_seconds": 61.0,
    "startup": {"reconciled": True, "failures": ["network 111111111111: bridge gone"]},
    "in_flight": [{"verb": "NetworkDriver.CreateEndpoint", "seconds": 4.2}],
    "worker": "create_endpoint at 'create endpoint ffffffffffff: add veth', running for 4s",
    "networks": [{
        "id": "e" * 64, "status": "ready", "mode": "overlay", "internal": False, "bridge": "po-eeeeeeeeeeee",
        "parent": None, "mtu": 1450, "subnets": [{"pool": "10.60.0.0/16", "gateway": "10.60.0.1/16"}],
        "overlay": {"name": "app", "vni": 7, "mtu": 1450, "peers": [{
            "host": "h2", "vtep": "10.99.0.12", "last_seen_seconds": 3.5,
            "endpoints": [{"id": "f" * 64, "mac": "02:42:0a:3c:00:03", "ip": "10.60.0.3", "ip6": None}],
        }]},
        "endpoints": [],
    }],
    "pools": [{"id": "PyoverlayLocal/10.60.0.0/16", "pool": "10.60.0.0/16", "range": None, "overlay": "app",
               "held": 3, "size": 65536}],
    "cluster": {
        "host": "h1", "vtep": "10.99.0.11", "underlay": "eth0", "max_mtu": 1350,
        "store": {"answering": False, "last_ok_seconds": 20.0, "last_error": "StoreUnavailable: etcd down",
                  "last_error_seconds": 1.0},
        "sync": {"last_error": "etcd down", "synced": True},
        "peers": {"listed": True, "last_sync_seconds": 12.0, "last_watch_batch_seconds": 20.0},
    },
}  # fmt: skip


def test_table_from_a_fixed_snapshot() -> None:
    assert render(SNAPSHOT) == """\
pyoverlay 0.1.0  pid 42  up 61s
reconciliation: 1 object(s) not restored (retried in the background)
  network 111111111111: bridge gone
busy: NetworkDriver.CreateEndpoint running for 4.2s
worker: create_endpoint at 'create endpoint ffffffffffff: add veth', running for 4s
cluster: host h1  VTEP 10.99.0.11 on eth0 (overlay MTU up to 1350)
  etcd: NOT answering since 1.0s ago: StoreUnavailable: etcd down
  sync: error: etcd down
  peers: listed, kernel synced 12.0s ago, last watch batch 20.0s ago
networks: 1
  eeeeeeeeeeee  overlay  bridge po-eeeeeeeeeeee  mtu 1450  10.60.0.0/16 gw 10.60.0.1
    overlay app  VNI 7  MTU 1450
    no endpoints
    peer host  vtep        endpoints  last seen  remote endpoints
    h2         10.99.0.12  1          3.5s ago   ffffffffffff=10.60.0.3
pools: 1
  pool          range  overlay  held / size
  10.60.0.0/16  -      app      3 / 65536
"""


def test_table_of_the_collected_status() -> None:
    text = render(_source(_repo(), Startup()).collect())
    assert "reconciliation: still running" in text and "cluster: none (--store local)" in text
    assert "abababababab  bridge  bridge po-abababababab  mtu 1500  10.50.0.0/24 gw 10.50.0.1" in text
    assert "cdcdcdcdcdcd  10.50.0.2/24  -     02:42:0a:32:00:02  pohcdcdcdcdcdcd  *:8080->80/tcp,127.0.0.1:5353" in text
    assert "10.50.0.0/24  -      -        2 / 256" in text
