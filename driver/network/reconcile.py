"""Bring the kernel back in line with the records when the driver starts.

dockerd never replays CreateNetwork, and it may drop endpoints without telling us
(a failed live-restore), so the driver itself must, at start:

* roll back records a crash left ``creating`` (dockerd never got an answer for them);
* recreate what a ready network is missing (after a reboot the bridges are gone);
* forget endpoints whose interface is gone (their container died with its namespace);
* delete links that follow our naming but belong to no record (orphans of a crash);
* rewrite the firewall chains from the records, so each rule exists exactly once.
"""

from __future__ import annotations

import logging
import re

from driver.netlink.adapter import Netlink
from driver.network.modes import Restores
from driver.network.service import NetworkService

log = logging.getLogger(__name__)

# Only names pyoverlay generates are ever collected; an admin's links never match.
_OWN_NAME = re.compile(r"^(po[hcmv][0-9a-f]{12}|po-[0-9a-f]{12})$")


def reconcile(service: NetworkService, nl: Netlink) -> None:
    repo = service.repo
    for net in repo.networks():
        mode = service.mode(net)
        if net.status == "creating":
            log.warning("network %s: rolling back a create interrupted by a crash", net.id[:12])
            mode.delete_network(net)
            repo.delete_network(net.id)
        else:
            mode.ensure_network(net)
    for ep in repo.endpoints():
        owner = repo.network(ep.network_id)
        if owner is None:
            repo.delete_endpoint(ep.id)
            continue
        mode = service.mode(owner)
        if ep.status == "creating" or not mode.endpoint_alive(ep):
            log.info("endpoint %s: its interface is gone, forgetting it", ep.id[:12])
            mode.delete_endpoint(owner, ep)
            repo.delete_endpoint(ep.id)
        elif isinstance(mode, Restores):
            mode.restore_endpoint(owner, ep)
    _collect_orphans(service, nl)
    service.sync_firewall()


def _collect_orphans(service: NetworkService, nl: Netlink) -> None:
    known: set[str] = set()
    for net in service.repo.networks():
        known |= service.mode(net).device_names(net)
    for ep in service.repo.endpoints():
        known |= {ep.host_if, ep.ctr_if} - {""}
    for link in nl.links():
        if _OWN_NAME.match(link.name or "") and link.name not in known:
            log.warning("deleting orphaned link %s", link.name)
            nl.delete(link.name)
