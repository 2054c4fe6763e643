"""Collect networks and endpoints dockerd no longer has, by asking the Docker API.

dockerd forgets objects the driver still holds: a DeleteNetwork that the driver died in
is retried with an *empty body* (moby/moby#33412), refused, and dockerd drops the
network anyway; a failed live-restore drops endpoints without telling any driver. No
request will ever name them again, so the driver looks for itself.

In a thread of its own, never on the request path: every ``interval`` seconds it reads
dockerd's networks (and, for each network the driver holds, its endpoints) through the
Docker API. A record dockerd did not list in **two consecutive reads** is deleted through
the worker, like any request: an object being created during one read (CreateNetwork
answered, dockerd not yet done) is listed by the next. When the API cannot be reached
(no socket, a managed plugin without the mount, dockerd restarting) nothing is deleted.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from driver.state import Repo

log = logging.getLogger(__name__)


class DockerView(Protocol):
    def networks(self) -> set[str]:
        """IDs of every network dockerd has; raises OSError-like errors when unreachable."""

    def endpoints(self, network_id: str) -> set[str]:
        """Endpoint IDs dockerd has on ``network_id``."""

    def addresses(self) -> dict[str, set[str]]:
        """Per subnet of any of dockerd's networks, the addresses it uses there: gateway,
        aux addresses and its containers' (bare IPs)."""


class DockerAPI:
    """The Docker API through the docker SDK (a client per thread: the SDK is not thread-safe)."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._client: Any = None

    def _api(self) -> Any:
        if self._client is None:
            import docker

            self._client = docker.APIClient(base_url=self.base_url, version="auto", timeout=self.timeout)
        return self._client

    def networks(self) -> set[str]:
        return {str(n["Id"]) for n in self._api().networks()}

    def endpoints(self, network_id: str) -> set[str]:
        info = self._api().inspect_network(network_id)
        return {str(c["EndpointID"]) for c in (info.get("Containers") or {}).values() if c.get("EndpointID")}

    def addresses(self) -> dict[str, set[str]]:
        used: dict[str, set[str]] = {}
        for summary in self._api().networks():
            configs = (summary.get("IPAM") or {}).get("Config") or []
            if not configs:
                continue
            info = self._api().inspect_network(summary["Id"])
            for cfg in configs:
                subnet = cfg.get("Subnet")
                if not subnet:
                    continue
                ips = used.setdefault(str(ipaddress.ip_network(subnet, strict=False)), set())
                ips |= {_bare(a) for a in [cfg.get("Gateway"), *(cfg.get("AuxiliaryAddresses") or {}).values()] if a}
                for c in (info.get("Containers") or {}).values():
                    ips |= {_bare(c[k]) for k in ("IPv4Address", "IPv6Address") if c.get(k)}
        return used

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def _bare(addr: str) -> str:
    return str(ipaddress.ip_interface(addr).ip)


@dataclass
class Aging:
    """What has been missing from dockerd's view, and since when (monotonic seconds)."""

    since: dict[str, float] = field(default_factory=dict)

    def due(self, missing: set[str], now: float, grace: float) -> set[str]:
        """Keys missing now *and* continuously for at least ``grace`` seconds."""
        self.since = {k: self.since.get(k, now) for k in missing}
        ready = {k for k, t in self.since.items() if now - t >= grace}
        for k in ready:
            del self.since[k]
        return ready


@dataclass
class Collector:
    """Decides what to collect from successive reads; pure, so it is unit-tested alone."""

    missing_networks: set[str] = field(default_factory=set)
    missing_endpoints: set[str] = field(default_factory=set)

    def networks(self, ours: set[str], theirs: set[str]) -> set[str]:
        """Our networks dockerd did not list this time *and* last time."""
        missing = ours - theirs
        due = missing & self.missing_networks
        self.missing_networks = missing - due
        return due

    def endpoints(self, ours: set[str], theirs: set[str]) -> set[str]:
        missing = ours - theirs
        due = missing & self.missing_endpoints
        self.missing_endpoints = missing - due
        return due


class DockerGC:
    def __init__(
        self,
        repo: Repo,
        docker: DockerView,
        submit: Callable[..., None],
        delete_network: Callable[[str], None],
        delete_endpoint: Callable[[str, str], None],
        *,
        interval: float = 60.0,
        release_address: Callable[[str, str], None] | None = None,
        release_pool: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Addresses and pools are collected much later than networks: between IPAM's
        # answer and the endpoint dockerd records there is no trace of them anywhere, and
        # a container start on a loaded host can take seconds.
        self.release_address = release_address
        self.release_pool = release_pool
        self.clock = clock
        self.grace = 10 * interval
        self.aging = Aging()
        self.repo = repo
        self.docker = docker
        self.submit = submit
        self.delete_network = delete_network
        self.delete_endpoint = delete_endpoint
        self.interval = interval
        self.collector = Collector()
        self.collected = 0  # objects handed to the worker for deletion (status, tests)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="pyoverlay-docker-gc", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _loop(self) -> None:
        unreachable_logged = False
        while not self._stop.wait(self.interval):
            try:
                self.scan()
                unreachable_logged = False
            except Exception as err:
                # Most often: no Docker API here. Nothing is collected without one.
                if not unreachable_logged:
                    log.warning("cannot compare with dockerd's objects (%s: %s); will retry", type(err).__name__, err)
                    unreachable_logged = True
                # Misses must be consecutive reads, not reads around an outage.
                self.collector, self.aging = Collector(), Aging()

    def scan(self) -> None:
        nets = {n.id: n for n in self.repo.networks() if n.status == "ready"}
        theirs = self.docker.networks()
        for nid in self.collector.networks(set(nets), theirs):
            log.warning("network %s: dockerd no longer has it; deleting it", nid[:12])
            self.submit(self.delete_network, nid)
            self.collected += 1
        ours_eps: dict[str, str] = {e.id: e.network_id for e in self.repo.endpoints() if e.status == "ready"}
        listed: set[str] = set()
        for nid in set(nets) & theirs:
            listed |= self.docker.endpoints(nid)
        candidates = {eid for eid, nid in ours_eps.items() if nid in theirs}
        for eid in self.collector.endpoints(candidates, listed):
            log.warning("endpoint %s (network %s): dockerd no longer has it; deleting it", eid[:12],
                        ours_eps[eid][:12])  # fmt: skip
            self.submit(self.delete_endpoint, ours_eps[eid], eid)
            self.collected += 1
        if self.release_address is not None and self.release_pool is not None:
            self._ipam(set(nets))

    def _ipam(self, ours: set[str]) -> None:
        """Pools and addresses our IPAM holds that none of dockerd's networks uses: what a
        RequestPool/RequestAddress left when the driver died before answering it (dockerd's
        retry arrives with an empty body, is refused, and dockerd never releases)."""
        assert self.release_address is not None and self.release_pool is not None
        used = self.docker.addresses()
        in_use = {ep.address.split("/")[0] for ep in self.repo.endpoints() if ep.address} | {
            ep.address_v6.split("/")[0] for ep in self.repo.endpoints() if ep.address_v6
        }
        missing: set[str] = set()
        for pool in self.repo.pools():
            if pool.pool not in used:
                missing.add(f"pool {pool.id}")
                continue
            for rec in self.repo.addresses(pool.id):
                # dockerd shows only a gateway the user gave, not one the IPAM picked: the
                # gateway lives as long as its pool, collected with it.
                if rec.purpose == "gateway":
                    continue
                if rec.address not in used[pool.pool] and rec.address not in in_use:
                    missing.add(f"address {pool.id} {rec.address}")
        for key in sorted(self.aging.due(missing, self.clock(), self.grace)):
            kind, pool_id, *rest = key.split(" ")
            log.warning("%s: no network of dockerd's uses it any more; releasing it", key)
            if kind == "pool":
                self.submit(self.release_pool, pool_id)
            else:
                self.submit(self.release_address, pool_id, rest[0])
            self.collected += 1
