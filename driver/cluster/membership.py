"""This host in the cluster: its lease, and etcd kept in agreement with its local state.

The local store is the truth about what this host has (its overlay networks and their
endpoints); etcd holds a copy others read. ``LocalView`` is that truth in memory, kept by
the worker, which updates it *before* adding anything to etcd. ``HostSync`` then makes
etcd agree, in the background, and so repairs whatever a request could not finish: a
delete that found etcd down, a write that timed out (and may or may not have
committed), a lease that expired during an outage (every key on it is gone: a new lease
and a rewrite bring this host's endpoints back to its peers).

Reading etcd before the local view, and deleting only on an unchanged revision, keeps
this from racing the worker: a key the worker adds after the read is never deleted.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from driver.cluster.base import ClusterStore, Entry, StoreUnavailable
from driver.cluster.registry import HostRecord, OverlaySpec, PeerRecord, Registry
from driver.errors import Conflict

log = logging.getLogger(__name__)


class LocalView:
    """What this host has, for the background threads: overlays and endpoint records."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._overlays: dict[str, OverlaySpec] = {}  # what this host asked of each overlay
        self._peers: dict[str, PeerRecord] = {}  # peer key → record

    def add_overlay(self, spec: OverlaySpec) -> None:
        with self._lock:
            self._overlays[spec.name] = spec

    def spec(self, name: str) -> OverlaySpec | None:
        with self._lock:
            return self._overlays.get(name)

    def shared(self, name: str) -> set[str]:
        """Addresses every host of the overlay holds alike (gateways, aux): never claimed."""
        spec = self.spec(name)
        if spec is None:
            return set()
        return {a.split("/")[0] for a in (*spec.gateways, *spec.aux)}

    def remove_overlay(self, name: str) -> None:
        with self._lock:
            self._overlays.pop(name, None)
            self._peers = {k: v for k, v in self._peers.items() if not k.startswith(f"peers/{name}/")}

    def add_peer(self, key: str, rec: PeerRecord) -> None:
        with self._lock:
            self._peers[key] = rec

    def remove_peer(self, key: str) -> None:
        with self._lock:
            self._peers.pop(key, None)

    def snapshot(self) -> tuple[set[str], dict[str, PeerRecord]]:
        with self._lock:
            return set(self._overlays), dict(self._peers)


class HostLease:
    """The lease this host's liveness facts hang on, renewed at a third of its TTL."""

    def __init__(self, store: ClusterStore, ttl: int, saved: Path | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self._lease = 0
        self._lock = threading.Lock()
        # The lease id survives a restart of the driver: if it is still alive, this host's
        # records on it are too, and peers never see its endpoints go (a crash and restart
        # inside the TTL disturbs nothing).
        self.saved = saved

    def current(self) -> int:
        """The lease to write with. The first writer takes one if the background thread
        has not yet (a container started right after the driver): StoreUnavailable if
        etcd cannot give one."""
        with self._lock:
            lease = self._lease
        if not lease:
            self.renew()
            with self._lock:
                lease = self._lease
        return lease

    def renew(self) -> bool:
        """Keep the lease alive, or grant a new one; True when the lease is new (its keys,
        if any, are gone and must be rewritten)."""
        with self._lock:
            lease = self._lease
        if not lease and (kept := self._load()) and self.store.keepalive(kept) > 0:
            log.info("keeping host lease %x of the previous run", kept)
            with self._lock:
                self._lease = kept
            return False
        if lease and self.store.keepalive(lease) > 0:
            return False
        if lease:
            log.warning("the host lease %x expired (etcd unreachable for over %ss?); taking a new one", lease, self.ttl)
        new = self.store.grant(self.ttl)
        with self._lock:
            self._lease = new
        self._save(new)
        return True

    def _load(self) -> int:
        try:
            return int(self.saved.read_text(), 16) if self.saved else 0
        except (OSError, ValueError):
            return 0

    def _save(self, lease: int) -> None:
        if self.saved is None:
            return
        tmp = self.saved.with_suffix(".tmp")
        try:
            tmp.write_text(f"{lease:x}\n")
            tmp.replace(self.saved)
        except OSError as err:
            log.warning("cannot keep the host lease id in %s: %s", self.saved, err)

    def revoke(self) -> None:
        with self._lock:
            lease, self._lease = self._lease, 0
        if lease:
            self.store.revoke(lease)


class HostSync:
    """One thread: renews the lease and, on every change or every ``resync_every``
    seconds, makes etcd agree with the local view."""

    def __init__(
        self,
        registry: Registry,
        lease: HostLease,
        view: LocalView,
        vtep: str,
        *,
        on_stale_membership: Callable[[str], None] | None = None,
        resync_every: float = 30.0,
        max_mtu: int | None = None,
        forget_after: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_mtu = max_mtu  # what this host's underlay carries, for joining again
        # More of this host's state to bring into etcd on each pass (the addresses).
        self.tasks: list[Callable[[], None]] = []
        self.full_tasks: list[Callable[[], None]] = []  # on the periodic pass only
        # A member without a host record for ``forget_after`` seconds (0: never) is
        # forgotten: ``forget_tasks`` drop what it held (its addresses), then its
        # membership goes. ``_departed``: when each was first seen gone, by this process.
        self.forget_after = forget_after
        self.forget_tasks: list[Callable[[str, str], None]] = []
        self._clock = clock
        self._departed: dict[tuple[str, str], float] = {}
        self.registry = registry
        self.lease = lease
        self.view = view
        self.vtep = vtep
        self.resync_every = resync_every
        self.on_stale_membership = on_stale_membership
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._host_on = 0  # the lease this host's record was last written with
        self.synced = threading.Event()  # set after each complete pass (tests, status)
        # Set once the local view is complete (after the start-up reconciliation): a
        # pass before that would withdraw every endpoint this host still has.
        self.ready = threading.Event()
        self.last_error: str | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="pyoverlay-host-sync", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Something local changed that etcd may not have taken: sync soon."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        # Renewing at a third of the TTL leaves two renewals' worth of slack for a slow
        # etcd (a leader election takes 1-3 s) before the lease, and our peers' view of
        # this host's endpoints, would lapse.
        interval = max(1.0, self.lease.ttl / 3)
        due = renew_due = 0.0
        while not self.ready.wait(0.5):
            if self._stop.is_set():
                return
        while not self._stop.is_set():
            try:
                # Renewed on its own schedule, not on every wake: a burst of container
                # removals then costs no keepalives.
                fresh = False
                if time.monotonic() >= renew_due:
                    renew_due = time.monotonic() + interval  # failed or not: again then
                    fresh = self.lease.renew()
                full = time.monotonic() >= due
                if fresh or self._wake.is_set() or full:
                    self._wake.clear()
                    self.last_error = None  # what this pass reports (a refused rejoin) stays
                    self.sync(rewrite=fresh, full=full)
                    due = time.monotonic() + self.resync_every
            except StoreUnavailable as err:
                self.last_error = str(err)
                log.warning("cluster sync: %s", err)
                due = renew_due  # the pass did not finish: again at the next renewal
            except Exception as err:
                self.last_error = f"{type(err).__name__}: {err}"
                log.exception("cluster sync failed")
                due = renew_due
            self._wake.wait(max(0.05, min(renew_due, due) - time.monotonic()))

    def sync(self, rewrite: bool = False, full: bool = False) -> None:
        """``rewrite``: the lease is new, rewrite every record; ``full``: the periodic pass,
        which also re-checks what no event would tell of (records deleted behind our back)."""
        lease = self.lease.current()
        if rewrite or full or self._host_on != lease:
            self.registry.put_host(HostRecord(vtep=self.vtep, hostname=socket.gethostname()), lease)
            self._host_on = lease
        members = self.registry.memberships()
        published = self._published(set(members))
        overlays, peers = self.view.snapshot()  # after the etcd reads, see the module doc
        store = self.registry.store
        for key, entry in published.items():
            if key not in peers:
                log.info("withdrawing stale endpoint record %s", key)
                store.delete(key, mod_revision=entry.mod_revision)
        # Only then leave: once this host is no member, a pass no longer looks for its
        # records there, and any left over would be programmed by every peer for good.
        for name in members.keys() - overlays:
            self._leave(name)
        for key, rec in peers.items():
            have = published.get(key)
            if rewrite or have is None or have.lease != lease or have.value != rec.model_dump_json().encode():
                name, _, endpoint = key.split("/")[1:]
                self.registry.publish(name, endpoint, rec, lease)
        for name in overlays - members.keys():
            self._rejoin(name)
        for task in self.tasks + (self.full_tasks if full else []):
            task()
        if full and self.forget_after > 0:
            self._forget_departed()
        self.synced.set()

    def _forget_departed(self) -> None:
        now, gone = self._clock(), self.registry.departed()
        self._departed = {k: self._departed.get(k, now) for k in gone}  # back in time: not gone
        for (name, host), since in sorted(self._departed.items()):
            if now - since >= self.forget_after:
                for task in self.forget_tasks:
                    task(name, host)
                self.registry.forget_member(name, host)
                del self._departed[(name, host)]

    def _published(self, names: set[str]) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        overlays, _ = self.view.snapshot()
        for name in names | overlays:
            entries, _ = self.registry.store.range(f"peers/{name}/{self.registry.host}/")
            found.update(entries)
        return found

    def _rejoin(self, name: str) -> None:
        """This host has the overlay but etcd does not list it as a member: etcd lost its
        data, or a join timed out without committing. Join again, with what was asked."""
        spec = self.view.spec(name)
        if spec is None or self.max_mtu is None:
            return
        log.warning("overlay %s: this host has it but is no member in etcd; joining it again", name)
        try:
            self.registry.join(spec, self.max_mtu)
        except Conflict as err:
            # Someone made another overlay of that name meanwhile: nothing to do but say so.
            log.error("overlay %s: cannot join again: %s", name, err)
            self.last_error = f"overlay {name}: {err}"

    def _leave(self, name: str) -> None:
        log.warning("overlay %s: this host is a member in etcd but has no such network; leaving it", name)
        self.registry.leave(name)
        if self.on_stale_membership is not None:
            self.on_stale_membership(name)
