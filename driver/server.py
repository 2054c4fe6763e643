"""Wire settings, store, services and the app together, and run uvicorn on the socket."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from driver.api.routes import Services
from driver.app import create_app
from driver.cluster.base import ClusterStore
from driver.cluster.node import Node, build_node
from driver.config import Settings, SettingsError, load_settings
from driver.firewall import Firewall
from driver.firewall.iptables import Iptables
from driver.ipam.addresses import LocalAddressBook
from driver.ipam.cluster import ClusterAddressBook
from driver.ipam.service import IpamService
from driver.netlink.adapter import Netlink
from driver.network.modes import Mode
from driver.network.modes.bridge import BridgeMode
from driver.network.modes.macvlan import MacvlanMode
from driver.network.modes.overlay import OverlayMode
from driver.network.reconcile import reconcile
from driver.network.service import NetworkService
from driver.network.steps import Steps
from driver.state import Repo
from driver.store.local import LocalStore
from driver.worker import Worker

log = logging.getLogger("driver")


def build(settings: Settings) -> tuple[Services, Netlink, Node | None]:
    repo = Repo(LocalStore(settings.state_dir))
    nl = Netlink()
    store, node = _cluster(settings)
    book = ClusterAddressBook(LocalAddressBook(repo), store, node.host if node else "")
    ipam = IpamService(repo, settings.default_pools_v4, settings.default_pools_v6, nl.route_networks, book)
    firewall = Firewall(Iptables(settings.firewall_timeout), Iptables(settings.firewall_timeout, v6=True))
    modes: dict[str, Mode] = {
        "bridge": BridgeMode(nl),
        "macvlan": MacvlanMode(nl),
        "overlay": OverlayMode(nl, node, ipam),
    }
    network = NetworkService(repo, modes, firewall)
    if node is not None:
        node.sync.tasks.append(book.flush)
        book.on_change = node.sync.poke
    return Services(network=network, ipam=ipam, worker=Worker(settings.request_timeout)), nl, node


def _cluster(settings: Settings) -> tuple[ClusterStore | None, Node | None]:
    if settings.store != "etcd":
        return None, None
    from driver.cluster.etcd import EtcdStore

    try:
        store = EtcdStore(settings.etcd_endpoints, settings.etcd_prefix, settings.etcd_timeout,
                          settings.etcd_ca, settings.etcd_cert, settings.etcd_key)  # fmt: skip
    except ValueError as err:
        raise SettingsError(f"etcd settings: {err}") from None
    return store, build_node(settings, store)


def _startup(services: Services, nl: Netlink, node: Node | None) -> None:
    try:
        failures = reconcile(services.network, nl)
        if failures:
            log.error("reconciliation at start left %d object(s) as they were; serving the rest", len(failures))
    finally:
        if node is not None:
            # Only now does the local view hold every endpoint the cluster should know.
            node.sync.ready.set()


def serve(sock: socket.socket, overrides: dict[str, Any]) -> int:
    settings = load_settings(overrides)
    logging.basicConfig(
        stream=sys.stdout,  # a managed plugin's stdout is logged by dockerd at level info
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pyroute2 logs every netlink message at debug; ours is the useful level.
    logging.getLogger("pyroute2").setLevel(logging.WARNING)
    Steps.fail_step = settings.fail_step
    services, nl, node = build(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Queued first on the worker, so every request waits for it, but the loop (and
        # GetCapabilities) stays responsive meanwhile.
        if node is not None:
            node.start()
        services.worker.submit(_startup, services, nl, node)
        yield
        services.worker.submit(nl.close)
        await asyncio.to_thread(services.worker.shutdown)
        if node is not None:
            await asyncio.to_thread(node.stop)

    app = create_app(services)
    app.router.lifespan_context = lifespan
    config = uvicorn.Config(
        app, log_level=settings.log_level, access_log=settings.log_level == "debug", lifespan="on",
        timeout_graceful_shutdown=5,
    )
    log.info("pyoverlay listening on %s (state in %s)", settings.socket, settings.state_dir)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
