"""Wire settings, store, services and the app together, and run uvicorn on the socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from driver import __version__
from driver.api.http import PluginH11Protocol
from driver.api.routes import Services
from driver.app import create_app
from driver.cluster.base import ClusterStore
from driver.cluster.node import Node, build_node
from driver.config import Settings, SettingsError, load_settings
from driver.firewall import Firewall
from driver.firewall.iptables import Iptables
from driver.firewall.watch import watch_firewall
from driver.gc import DockerAPI, DockerGC
from driver.ipam.addresses import LocalAddressBook
from driver.ipam.cluster import ClusterAddressBook
from driver.ipam.service import IpamService
from driver.netlink.adapter import Netlink
from driver.network.modes import Mode
from driver.network.modes.bridge import BridgeMode
from driver.network.modes.macvlan import MacvlanMode
from driver.network.modes.overlay import OverlayMode
from driver.network.reconcile import Retry, reconcile
from driver.network.service import NetworkService
from driver.network.steps import Steps
from driver.ops.activity import Activity
from driver.ops.logs import setup_logging
from driver.ops.measured_store import MeasuredStore, StoreHealth
from driver.ops.metrics import LabelValues
from driver.ops.metrics_server import MetricsServer
from driver.ops.sightings import PeerSightings
from driver.ops.status import Startup, StatusSource
from driver.ops.telemetry import DriverMetrics
from driver.state import Repo
from driver.store.local import LocalStore
from driver.worker import Worker

log = logging.getLogger("driver")


def build(settings: Settings, metrics: DriverMetrics) -> tuple[Services, Netlink, Node | None]:
    repo = Repo(LocalStore(settings.state_dir))
    nl = Netlink()
    sightings = PeerSightings()
    store, node = _cluster(settings, metrics, sightings)
    local = LocalAddressBook(repo)
    book = ClusterAddressBook(local, store, node.host if node else "")
    ipam = IpamService(repo, settings.default_pools_v4, settings.default_pools_v6, nl.route_networks, book)
    firewall = Firewall(*(Iptables(settings.firewall_timeout, v6, settings.firewall_backend) for v6 in (False, True)))
    modes: dict[str, Mode] = {
        "bridge": BridgeMode(nl),
        "macvlan": MacvlanMode(nl),
        "overlay": OverlayMode(nl, node, ipam),
    }
    network = NetworkService(repo, modes, firewall)
    if node is not None:
        node.sync.tasks.append(book.flush)
        node.sync.full_tasks.append(book.sweep)
        node.sync.forget_tasks.append(book.forget_host)
        book.on_change = node.sync.poke
        book.shared = node.view.shared
    activity = Activity(metrics)
    health = store.health if isinstance(store, MeasuredStore) else None
    status = StatusSource(repo, local.held, activity, Startup(), node, health, sightings)
    _gauges(metrics, repo, local, activity, health)
    worker = Worker(settings.request_timeout)
    status.worker_busy = worker.busy
    return Services(network=network, ipam=ipam, worker=worker, status=status, activity=activity), nl, node


def _gauges(
    metrics: DriverMetrics, repo: Repo, book: LocalAddressBook, activity: Activity, health: StoreHealth | None
) -> None:
    # Read at scrape time from the same in-memory copies status uses: never the worker.
    def endpoints() -> Iterable[tuple[LabelValues, float]]:
        counts = {n.id[:12]: 0 for n in repo.networks()}
        for ep in repo.endpoints():
            counts[ep.network_id[:12]] = counts.get(ep.network_id[:12], 0) + 1
        return [((nid,), n) for nid, n in sorted(counts.items())]

    def addresses() -> Iterable[tuple[LabelValues, float]]:
        return [((p.id,), len(book.held(p))) for p in sorted(repo.pools(), key=lambda p: p.id)]

    def in_flight() -> Iterable[tuple[LabelValues, float]]:
        return [((), len(activity.in_flight()))]

    def watch_age() -> Iterable[tuple[LabelValues, float]]:
        last = health.last_watch_batch if health else None
        return [] if last is None else [((), round(time.monotonic() - last, 3))]

    metrics.add_gauges(endpoints, addresses, in_flight, watch_age if health is not None else None)


def _cluster(
    settings: Settings, metrics: DriverMetrics, sightings: PeerSightings
) -> tuple[ClusterStore | None, Node | None]:
    if settings.store != "etcd":
        return None, None
    from driver.cluster.etcd import EtcdStore

    try:
        etcd = EtcdStore(settings.etcd_endpoints, settings.etcd_prefix, settings.etcd_timeout,
                         settings.etcd_ca, settings.etcd_cert, settings.etcd_key)  # fmt: skip
    except ValueError as err:
        raise SettingsError(f"etcd settings: {err}") from None
    store = MeasuredStore(etcd, metrics, on_keys=sightings.saw)
    return store, build_node(settings, store)


def _startup(services: Services, nl: Netlink, node: Node | None, metrics: DriverMetrics, retry: float) -> None:
    try:
        _reconcile(services, nl, metrics, retry)
    finally:
        services.status.startup.done = True
        if node is not None:
            # Only now does the local view hold every endpoint the cluster should know.
            node.sync.ready.set()


def _reconcile(services: Services, nl: Netlink, metrics: DriverMetrics, retry: float) -> None:
    """One reconciliation pass (at start, and again while one left failures)."""
    startup, again = services.status.startup, services.status.startup.done
    try:
        failures = reconcile(services.network, nl)
        if failures:
            log.error("reconciliation %s left %d object(s) as they were; serving the rest (retried every %gs)",
                      "retried" if again else "at start", len(failures), retry)  # fmt: skip
        elif again:
            log.info("reconciliation retried: every object is back in line")
        startup.failures = failures
        metrics.reconcile_failures.inc(by=len(failures))
    except Exception as err:
        startup.failures = [f"reconciliation: {err}"]
        metrics.reconcile_failures.inc()
        raise
    finally:
        metrics.reconcile_runs.inc()


def _docker_gc(settings: Settings, services: Services) -> DockerGC | None:
    if settings.gc_interval <= 0:
        return None
    return DockerGC(
        services.network.repo, DockerAPI(settings.docker_host), services.worker.submit,
        services.network.delete_network, services.network.delete_endpoint, interval=settings.gc_interval,
        release_address=services.ipam.release_address, release_pool=services.ipam.release_pool,
    )


def _metrics_server(settings: Settings, metrics: DriverMetrics) -> tuple[MetricsServer | None, list[Path]]:
    """Start the metrics listeners asked for; the Unix socket files to remove at exit."""
    if settings.metrics_socket is None and settings.metrics_addr is None:
        return None, []
    from driver.cli import StartupError, bind_socket
    from driver.config import parse_hostport

    server, owned = MetricsServer(metrics.registry.render), []
    try:
        if settings.metrics_socket is not None:
            server.listen_unix(bind_socket(settings.metrics_socket))
            owned.append(settings.metrics_socket)
        if settings.metrics_addr is not None:
            server.listen_tcp(*parse_hostport(settings.metrics_addr))
    except (StartupError, OSError) as err:
        server.stop()
        raise SettingsError(f"--metrics-socket/--metrics-addr: cannot listen: {err}") from None
    return server, owned


def serve(sock: socket.socket, overrides: dict[str, Any], warnings: Sequence[str] = ()) -> int:
    """Serve on ``sock`` until stopped; ``warnings`` are what the start-up before logging
    was set up (``driver.cli``) has to say."""
    settings = load_settings(overrides)
    setup_logging(settings.log_level)
    Steps.fail_step = settings.fail_step
    metrics = DriverMetrics()
    services, nl, node = build(settings, metrics)
    metrics_server, metrics_sockets = _metrics_server(settings, metrics)
    # Only once every setting was found good: a bad one stops the driver with one line.
    for line in warnings:
        log.warning("%s", line)
    gc = _docker_gc(settings, services)
    # Restores our rules when someone else flushes them (driver.firewall.watch).
    watch_firewall(services.network, services.worker.submit, settings.firewall_check_interval)
    every = settings.resync_interval
    failing = lambda: bool(services.status.startup.failures)  # noqa: E731
    retry = Retry(partial(_reconcile, services, nl, metrics, every), failing, services.worker.submit, every)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Queued first on the worker, so every request waits for it, but the loop (and
        # GetCapabilities) stays responsive meanwhile.
        if node is not None:
            node.start()
        services.worker.submit(_startup, services, nl, node, metrics, settings.resync_interval)
        retry.start()
        if gc is not None:
            gc.start()
        yield
        await asyncio.to_thread(retry.stop)
        if gc is not None:
            await asyncio.to_thread(gc.stop)
        if metrics_server is not None:
            await asyncio.to_thread(metrics_server.stop)
        services.worker.submit(nl.close)
        await asyncio.to_thread(services.worker.shutdown)
        if node is not None:
            await asyncio.to_thread(node.stop)

    app = create_app(services)
    app.router.lifespan_context = lifespan
    # log_config=None: uvicorn's records go through our handlers (its own config would
    # send its info lines to stderr, which dockerd logs as errors). http: broken framing
    # answered with an Err too (driver.api.http); ws="none": an Upgrade header never hands
    # the connection to a WebSocket library that happens to be installed.
    config = uvicorn.Config(
        app, log_level=settings.log_level, access_log=settings.log_level == "debug", lifespan="on",
        timeout_graceful_shutdown=5, log_config=None, http=PluginH11Protocol, ws="none",
    )
    log.info("pyoverlay %s listening on %s (state in %s)", __version__, settings.socket, settings.state_dir)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for path in metrics_sockets:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return 0
