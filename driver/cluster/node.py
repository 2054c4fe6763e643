"""This host as a cluster node: its identity, VTEP, and the parts that keep it in step.

Built once at start when ``--store etcd`` is given (``build_node``); bridge and macvlan
networks never touch it. Nothing here talks to etcd while it is being built: the driver
must listen at once, whether or not etcd answers.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from driver.cluster.base import ClusterStore
from driver.cluster.membership import HostLease, HostSync, LocalView
from driver.cluster.peers import PeerProgrammer
from driver.cluster.registry import Registry
from driver.config import Settings, SettingsError
from driver.netlink.adapter import Link, Netlink

log = logging.getLogger(__name__)

HOST_ID_FILE = "host-id"
LEASE_FILE = "host-lease"
VXLAN_OVERHEAD = {4: 50, 6: 70}  # inner Ethernet 14 + VXLAN 8 + UDP 8 + outer IPv4 20 / IPv6 40


@dataclass
class Node:
    host: str
    vtep: str
    underlay: Link
    port: int
    store: ClusterStore
    registry: Registry
    lease: HostLease
    view: LocalView
    programmer: PeerProgrammer
    sync: HostSync

    @property
    def max_mtu(self) -> int:
        return carried_mtu(self.underlay, self.vtep)

    def start(self) -> None:
        self.programmer.start()
        self.sync.start()

    def stop(self) -> None:
        self.sync.stop()
        self.programmer.stop()
        self.store.close()


def carried_mtu(underlay: Link, vtep: str) -> int:
    """The largest MTU this host's underlay carries inside VXLAN."""
    return underlay.mtu - VXLAN_OVERHEAD[ipaddress.ip_address(vtep).version]


def host_id(state_dir: Path) -> str:
    """This host's name in the cluster: made once, kept with the local state."""
    path = state_dir / HOST_ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    new = secrets.token_hex(6)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(new + "\n")
    tmp.replace(path)
    log.info("this host joins clusters as %s (%s)", new, path)
    return new


def resolve_vtep(nl: Netlink, advertise: str | None) -> tuple[str, Link]:
    """The VTEP address and the underlay link holding it, from ``--advertise-addr``."""
    if advertise is None:
        found = nl.default_route_source() or nl.default_route_source(v6=True)
        if found is None:
            raise SettingsError(
                "--advertise-addr (PYOVERLAY_ADVERTISE_ADDR): this host has no default route to take "
                "the VTEP address from; give an address or interface"
            )
        return found
    try:
        ip = str(ipaddress.ip_address(advertise))
    except ValueError:
        return _address_of_interface(nl, advertise)
    link = nl.link_of_address(ip)
    if link is None:
        raise SettingsError(f"--advertise-addr (PYOVERLAY_ADVERTISE_ADDR): {ip} is not an address of this host")
    return ip, link


def _address_of_interface(nl: Netlink, name: str) -> tuple[str, Link]:
    link = nl.link(name)
    if link is None:
        raise SettingsError(
            f"--advertise-addr (PYOVERLAY_ADVERTISE_ADDR): {name!r} is neither an IP address "
            "nor an interface of this host"
        )
    addrs = sorted(
        (ipaddress.ip_interface(a).ip for a in nl.addresses(name)),
        key=lambda a: (a.version, a.is_link_local),  # IPv4 first, then global IPv6
    )
    usable = [a for a in addrs if not a.is_link_local]
    if not usable:
        raise SettingsError(f"--advertise-addr (PYOVERLAY_ADVERTISE_ADDR): interface {name} has no usable address")
    return str(usable[0]), link


def build_node(settings: Settings, store: ClusterStore, nl_factory: type[Netlink] = Netlink) -> Node:
    probe = nl_factory()
    try:
        vtep, underlay = resolve_vtep(probe, settings.advertise_addr)
    finally:
        probe.close()
    host = host_id(settings.state_dir)
    registry = Registry(store, host)
    lease = HostLease(store, settings.host_ttl, saved=settings.state_dir / LEASE_FILE)
    view = LocalView()
    node = Node(
        host=host, vtep=vtep, underlay=underlay, port=settings.vxlan_port, store=store, registry=registry,
        lease=lease, view=view,
        programmer=PeerProgrammer(store, nl_factory(), host, resync_every=settings.resync_interval),
        sync=HostSync(registry, lease, view, vtep, resync_every=settings.resync_interval,
                      max_mtu=carried_mtu(underlay, vtep), forget_after=settings.forget_host_after),
    )
    log.info("cluster node %s: VTEP %s on %s (MTU %d), VXLAN port %d", host, vtep, underlay.name, underlay.mtu,
             settings.vxlan_port)  # fmt: skip
    return node
