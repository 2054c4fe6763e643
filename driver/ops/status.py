"""What ``pyoverlay status`` shows, collected from in-memory state only.

Nothing here waits for the worker or calls etcd: records come from the local store's
in-memory copy (a snapshot per read), held addresses from the address book's copy, peers
from the peer programmer's copy, and the store's health from what the background
threads' calls last saw (``MeasuredStore``). So a status answers while the worker is
stuck on a slow call, and says so (the requests in flight), and while etcd is down.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from driver import __version__
from driver.cluster.node import Node
from driver.errors import Unavailable
from driver.firewall.rules import PROTOCOLS
from driver.network.modes.bridge import DEFAULT_MTU, bridge_name
from driver.ops.activity import Activity
from driver.ops.client import STATUS_VERB
from driver.ops.measured_store import StoreHealth
from driver.ops.sightings import PeerSightings
from driver.state import EndpointRecord, NetworkRecord, PoolRecord, PortBinding, Repo

# Collecting reads memory only; this bounds it anyway, should a store ever be slow.
COLLECT_TIMEOUT = 2.0


@dataclass
class Startup:
    """The start-up reconciliation's outcome, set by the worker when it is done."""

    done: bool = False
    failures: list[str] = field(default_factory=list)


def _age(t: float | None, now: float) -> float | None:
    return None if t is None or t <= 0 else round(now - t, 1)


@dataclass
class StatusSource:
    repo: Repo
    held: Callable[[PoolRecord], set[int]]
    activity: Activity
    startup: Startup
    node: Node | None = None
    health: StoreHealth | None = None
    sightings: PeerSightings | None = None
    # What the worker runs now ("<call> at <step>, running for Ns"): a request that waits
    # behind it shows in in_flight, this says what it waits for.
    worker_busy: Callable[[], str | None] | None = None
    started_at: float = field(default_factory=time.monotonic)
    timeout: float = COLLECT_TIMEOUT

    async def snapshot(self) -> dict[str, Any]:
        """``collect`` off the event loop (dockerd's requests keep flowing) and off the
        worker (never queued behind a slow call), within ``timeout``."""
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.collect), self.timeout)
        except TimeoutError:
            raise Unavailable(f"status: not collected within {self.timeout:g}s") from None

    def collect(self) -> dict[str, Any]:
        now = time.monotonic()
        endpoints: dict[str, list[EndpointRecord]] = {}
        for ep in self.repo.endpoints():
            endpoints.setdefault(ep.network_id, []).append(ep)
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_seconds": round(now - self.started_at, 1),
            "startup": {"reconciled": self.startup.done, "failures": list(self.startup.failures)},
            "in_flight": [{"verb": v, "seconds": round(s, 1)} for v, s in self.activity.in_flight(skip=STATUS_VERB)],
            "worker": self.worker_busy() if self.worker_busy else None,
            "networks": [self._network(n, endpoints.get(n.id, [])) for n in self._networks()],
            "pools": [self._pool(p) for p in sorted(self.repo.pools(), key=lambda p: p.id)],
            "cluster": self._cluster(now),
        }

    def _networks(self) -> list[NetworkRecord]:
        return sorted(self.repo.networks(), key=lambda n: n.id)

    def _network(self, net: NetworkRecord, eps: list[EndpointRecord]) -> dict[str, Any]:
        cfg = net.config
        out: dict[str, Any] = {
            "id": net.id,
            "status": net.status,
            "mode": cfg.mode,
            "internal": cfg.internal,
            "bridge": bridge_name(net) if cfg.mode != "macvlan" else None,
            "parent": cfg.parent,
            # macvlan without -o mtu: the parent's, which only the kernel knows.
            "mtu": net.overlay.mtu if net.overlay else cfg.mtu or (None if cfg.mode == "macvlan" else DEFAULT_MTU),
            "subnets": [{"pool": s.pool, "gateway": s.gateway} for s in (*net.ipv4, *net.ipv6)],
            "overlay": None,
            "endpoints": [_endpoint(e) for e in sorted(eps, key=lambda e: e.id)],
        }
        if cfg.mode == "overlay":
            out["overlay"] = {
                "name": cfg.overlay,
                "vni": net.overlay.vni if net.overlay else cfg.vni,
                "mtu": net.overlay.mtu if net.overlay else None,
                "peers": self._peers(cfg.overlay or ""),
            }
        return out

    def _peers(self, name: str) -> list[dict[str, Any]]:
        if self.node is None:
            return []
        hosts: dict[str, dict[str, Any]] = {}
        for key, rec in sorted(self.node.programmer.peers(name).items()):
            host, _, endpoint = key.partition("/")
            entry = hosts.setdefault(host, {
                "host": host, "vtep": rec.vtep, "endpoints": [],
                "last_seen_seconds": self.sightings.age(host) if self.sightings else None,
            })  # fmt: skip
            entry["endpoints"].append({"id": endpoint, "mac": rec.mac, "ip": rec.ip, "ip6": rec.ip6})
        return list(hosts.values())

    def _pool(self, pool: PoolRecord) -> dict[str, Any]:
        net = ipaddress.ip_network(pool.pool)
        return {
            "id": pool.id,
            "pool": pool.pool,
            "range": pool.subpool,
            "overlay": pool.overlay,
            "held": len(self.held(pool)),
            "size": net.num_addresses,
        }

    def _cluster(self, now: float) -> dict[str, Any] | None:
        node = self.node
        if node is None:
            return None
        health = self.health
        return {
            "host": node.host,
            "vtep": node.vtep,
            "underlay": node.underlay.name,
            "max_mtu": node.max_mtu,
            "store": {
                "answering": health.answering if health else None,
                "last_ok_seconds": _age(health.last_ok, now) if health else None,
                "last_error": health.last_error if health else None,
                "last_error_seconds": _age(health.last_error_at, now) if health else None,
            },
            "sync": {"last_error": node.sync.last_error, "synced": node.sync.synced.is_set()},
            "peers": {
                "listed": node.programmer.listed.is_set(),
                "last_sync_seconds": _age(node.programmer.last_sync, now),
                "last_watch_batch_seconds": _age(health.last_watch_batch, now) if health else None,
            },
        }


def _endpoint(ep: EndpointRecord) -> dict[str, Any]:
    return {
        "id": ep.id,
        "status": ep.status,
        "address": ep.address,
        "address_v6": ep.address_v6,
        "mac": ep.mac,
        "interface": ep.host_if or ep.ctr_if,
        "ports": [_port(p) for p in ep.ports],
    }


def _port(p: PortBinding) -> str:
    host_ports = f"{p.host_port}-{p.host_port_end}" if p.host_port_end else str(p.host_port)
    return f"{p.host_ip or '*'}:{host_ports}->{p.port}/{PROTOCOLS.get(p.proto, str(p.proto))}"
