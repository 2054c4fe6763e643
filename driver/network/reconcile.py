"""Bring the kernel back in line with the records when the driver starts.

dockerd never replays CreateNetwork, and it may drop endpoints without telling us
(a failed live-restore), so the driver itself must, at start:

* roll back records a crash left ``creating`` (dockerd never got an answer for them);
* finish deletes a crash left ``deleting`` (dockerd forgets the object when its retry,
  with an empty body, is refused: restoring it would leave a zombie);
* recreate what a ready network is missing (after a reboot the bridges are gone);
* forget endpoints whose interface is gone (their container died with its namespace);
* delete links that follow our naming but belong to no record (orphans of a crash);
* rewrite the firewall chains from the records, so each rule exists exactly once.

An object that cannot be brought back (its bridge name taken by another kind of link, a
macvlan parent gone, a VXLAN port in use) is reported and left as it is; ``Retry`` runs
the whole pass again in the background until nothing fails, since every step of it is
idempotent and the cause is usually fixed by hand meanwhile.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from functools import partial

from driver.netlink.adapter import Netlink
from driver.network.modes import Restores
from driver.network.service import NetworkService
from driver.network.steps import checkpoint
from driver.state import EndpointRecord, NetworkRecord

log = logging.getLogger(__name__)

# Only names pyoverlay generates are ever collected; an admin's links never match.
_OWN_NAME = re.compile(r"^(po[hcmv][0-9a-f]{12}|po-[0-9a-f]{12})$")


def reconcile(service: NetworkService, nl: Netlink) -> list[str]:
    """Bring every object back in line; one that cannot be must not stop the others.

    Returns what failed (also logged), for the caller to report and retry later.
    """
    repo = service.repo
    failures: list[str] = []
    for net in repo.networks():
        _each(failures, f"network {net.id[:12]}", partial(_network, service, net))
    for ep in repo.endpoints():
        _each(failures, f"endpoint {ep.id[:12]}", partial(_endpoint, service, ep))
    _each(failures, "orphaned links", lambda: _collect_orphans(service, nl))
    _each(failures, "firewall", partial(_firewall, service))
    return failures


def _firewall(service: NetworkService) -> None:
    checkpoint("reconcile: sync firewall")
    service.sync_firewall()


def _each(failures: list[str], what: str, fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception as err:
        log.error("reconciliation of %s failed: %s", what, err)
        failures.append(f"{what}: {err}")


def _network(service: NetworkService, net: NetworkRecord) -> None:
    mode = service.mode(net)
    if net.status == "creating":
        log.warning("network %s: rolling back a create interrupted by a crash", net.id[:12])
        checkpoint(f"reconcile: roll back network {net.id[:12]}")
        mode.delete_network(net)
        service.repo.delete_network(net.id)
    elif net.status == "deleting":
        log.warning("network %s: finishing a delete interrupted by a crash", net.id[:12])
        checkpoint(f"reconcile: finish deleting network {net.id[:12]}")
        service.delete_network(net.id)
    else:
        checkpoint(f"reconcile: restore network {net.id[:12]}")
        mode.ensure_network(net)


def _endpoint(service: NetworkService, ep: EndpointRecord) -> None:
    repo = service.repo
    owner = repo.network(ep.network_id)
    if owner is None:
        repo.delete_endpoint(ep.id)
        return
    mode = service.mode(owner)
    if ep.status == "deleting":
        log.warning("endpoint %s: finishing a delete interrupted by a crash", ep.id[:12])
        checkpoint(f"reconcile: finish deleting endpoint {ep.id[:12]}")
        service.delete_endpoint(ep.network_id, ep.id)
    elif ep.status == "creating" or not mode.endpoint_alive(ep):
        log.info("endpoint %s: its interface is gone, forgetting it", ep.id[:12])
        checkpoint(f"reconcile: forget endpoint {ep.id[:12]}")
        mode.delete_endpoint(owner, ep)
        repo.delete_endpoint(ep.id)
    elif isinstance(mode, Restores):
        checkpoint(f"reconcile: restore endpoint {ep.id[:12]}")
        mode.restore_endpoint(owner, ep)


def _collect_orphans(service: NetworkService, nl: Netlink) -> None:
    known: set[str] = set()
    for net in service.repo.networks():
        known |= service.mode(net).device_names(net)
    for ep in service.repo.endpoints():
        known |= {ep.host_if, ep.ctr_if} - {""}
    for link in nl.links():
        if _OWN_NAME.match(link.name or "") and link.name not in known:
            log.warning("deleting orphaned link %s", link.name)
            checkpoint(f"reconcile: delete orphaned link {link.name}")
            nl.delete(link.name)


class Retry:
    """Run ``again`` (a reconciliation pass, which records what failed) on the worker
    every ``interval`` seconds while ``failing()`` says the last pass left something.

    Like the firewall check: the thread only decides, the worker does the work, so a
    retry never races a request and no request waits for it."""

    def __init__(
        self, again: Callable[[], None], failing: Callable[[], bool], submit: Callable[..., None], interval: float
    ) -> None:
        self.again, self.failing, self.submit, self.interval = again, failing, submit, interval
        self._queued = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Retry:
        self._thread = threading.Thread(target=self._loop, name="pyoverlay-reconcile-retry", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self._queued.is_set() or not self.failing():
                continue
            self._queued.set()
            try:
                self.submit(self._run)
            except RuntimeError:  # the worker shut down: the driver is stopping
                return

    def _run(self) -> None:
        try:
            self.again()
        finally:
            self._queued.clear()
