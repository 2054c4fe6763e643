"""Remote endpoints → static FDB and neighbour entries, kept in step with etcd.

Two threads, neither ever waiting on a request nor making one wait:

* the **watcher** lists ``peers/`` and watches it from the listed revision + 1, and
  hands every batch to the programmer. A compacted or broken watch is re-listed after a
  back-off (never resumed at a guessed revision: that is how updates get lost).
* the **programmer** owns every FDB and neighbour entry of every overlay: it applies
  watch batches to the overlays this host has, and fully diffs an overlay against the
  kernel when the worker attaches one, after a re-list, and periodically (anything
  missed or changed behind our back is repaired).

The worker only posts messages (``attach``/``detach``), so a slow netlink or etcd never
delays a request, and a request never delays convergence.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from driver.cluster.base import ClusterStore, Compacted, Event, StoreUnavailable, Watch, WatchBatch
from driver.cluster.registry import PeerRecord, parse_peer_key
from driver.errors import DriverError

log = logging.getLogger(__name__)

RESYNC_EVERY = 30.0
_BACKOFF = (0.2, 5.0)


class PeerNetlink(Protocol):
    def fdb_replace(self, dev: str, mac: str, dst: str) -> None: ...
    def fdb_delete(self, dev: str, mac: str, bridge: str | None = None) -> None: ...
    def fdb_entries(self, dev: str) -> dict[str, str]: ...
    def neigh_replace(self, dev: str, ip: str, mac: str) -> None: ...
    def neigh_delete(self, dev: str, ip: str) -> None: ...
    def neigh_entries(self, dev: str) -> dict[str, str]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Attachment:
    """Where one overlay lives on this host."""

    vxlan: str
    bridge: str


@dataclass(frozen=True)
class _Attach:
    name: str
    where: Attachment | None  # None: detach


@dataclass(frozen=True)
class _Listed:
    peers: dict[str, PeerRecord]  # key → record


Message = WatchBatch | _Attach | _Listed | None  # None: stop


class PeerProgrammer:
    def __init__(self, store: ClusterStore, nl: PeerNetlink, host: str, resync_every: float = RESYNC_EVERY) -> None:
        self.store = store
        self.nl = nl
        self.host = host
        self.resync_every = resync_every
        self._inbox: queue.Queue[Message] = queue.Queue()
        self._peers: dict[str, dict[str, PeerRecord]] = {}  # overlay → endpoint → record (remote only)
        self._attached: dict[str, Attachment] = {}
        self._stop = threading.Event()
        self._watch_lock = threading.Lock()
        self._watch: Watch | None = None
        self._threads: list[threading.Thread] = []
        # Milestones for status and tests: when an overlay's entries were last in sync.
        self.listed = threading.Event()
        self.last_sync = 0.0

    # -- called from the worker (never blocks) -----------------------------------
    def attach(self, name: str, where: Attachment) -> None:
        self._inbox.put(_Attach(name, where))

    def detach(self, name: str) -> None:
        self._inbox.put(_Attach(name, None))

    def start(self) -> None:
        for target, name in ((self._watch_loop, "peer-watch"), (self._program_loop, "peer-program")):
            t = threading.Thread(target=target, name=f"pyoverlay-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        with self._watch_lock:
            watch = self._watch
        if watch is not None:
            watch.cancel()
        for t in self._threads:
            t.join(timeout=5)

    # -- the watcher ------------------------------------------------------------------
    def _watch_loop(self) -> None:
        delay = _BACKOFF[0]
        while not self._stop.is_set():
            try:
                self._list_and_watch()
                delay = _BACKOFF[0]
            except Compacted as err:
                log.warning("peer watch fell behind etcd's compaction (%s); listing again", err)
            except StoreUnavailable as err:
                log.warning("peer watch: %s; retrying in %.1fs", err, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, _BACKOFF[1])
            except Exception:
                log.exception("peer watch failed; retrying in %.1fs", delay)
                self._stop.wait(delay)
                delay = min(delay * 2, _BACKOFF[1])

    def _list_and_watch(self) -> None:
        entries, revision = self.store.range("peers/")
        peers = {k: PeerRecord.model_validate_json(e.value) for k, e in entries.items()}
        self._inbox.put(_Listed(peers))
        watch = self.store.watch("peers/", revision + 1)
        with self._watch_lock:
            self._watch = watch
        try:
            for batch in watch:
                if self._stop.is_set():
                    return
                if batch.events:
                    self._inbox.put(batch)
        finally:
            with self._watch_lock:
                self._watch = None
            watch.cancel()

    # -- the programmer ---------------------------------------------------------------
    def _program_loop(self) -> None:
        next_resync = time.monotonic() + self.resync_every
        while True:
            try:
                msg = self._inbox.get(timeout=max(0.0, next_resync - time.monotonic()))
            except queue.Empty:
                self._guard(self._sync_all)
                next_resync = time.monotonic() + self.resync_every
                continue
            if msg is None:
                self.nl.close()
                return
            self._guard(partial(self._handle, msg))

    def _guard(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            # One bad overlay or entry must not stop the others; the next resync retries.
            log.exception("programming peer entries failed; the next resync retries")

    def _handle(self, msg: Message) -> None:
        if isinstance(msg, WatchBatch):
            for ev in msg.events:
                # One by one: a batch spans overlays (a lease's keys go in one revision),
                # and each event must be remembered even if another's overlay fails.
                self._guard(partial(self._apply, ev))
        elif isinstance(msg, _Listed):
            self._peers = {}
            for key, rec in msg.peers.items():
                self._remember(key, rec)
            self.listed.set()
            self._sync_all()
        elif isinstance(msg, _Attach):
            if msg.where is None:
                self._attached.pop(msg.name, None)
            else:
                self._attached[msg.name] = msg.where
                self._sync(msg.name)

    def _remember(self, key: str, rec: PeerRecord | None) -> tuple[str, str] | None:
        parsed = parse_peer_key(key)
        if parsed is None or parsed[1] == self.host:
            return None  # our own endpoints: the local bridge knows them
        name, _, endpoint = parsed
        table = self._peers.setdefault(name, {})
        if rec is None:
            table.pop(f"{parsed[1]}/{endpoint}", None)
        else:
            table[f"{parsed[1]}/{endpoint}"] = rec
        return name, f"{parsed[1]}/{endpoint}"

    def _apply(self, ev: Event) -> None:
        old = self._peer_at(ev.key)
        rec = None if ev.entry is None else PeerRecord.model_validate_json(ev.entry.value)
        where = self._remember(ev.key, rec)
        if where is None or where[0] not in self._attached:
            return
        at = self._attached[where[0]]
        if old is not None and (rec is None or old.mac != rec.mac):
            self._unprogram(at, old)
        if rec is not None:
            self._program(at, rec)

    def _peer_at(self, key: str) -> PeerRecord | None:
        parsed = parse_peer_key(key)
        if parsed is None:
            return None
        return self._peers.get(parsed[0], {}).get(f"{parsed[1]}/{parsed[2]}")

    def _program(self, at: Attachment, rec: PeerRecord) -> None:
        # FDB first: once the neighbour answers ARP, frames must already have a tunnel.
        self.nl.fdb_replace(at.vxlan, rec.mac, rec.vtep)
        for ip in (rec.ip, rec.ip6):
            if ip:
                self.nl.neigh_replace(at.vxlan, ip, rec.mac)

    def _unprogram(self, at: Attachment, rec: PeerRecord) -> None:
        for ip in (rec.ip, rec.ip6):
            if ip:
                self.nl.neigh_delete(at.vxlan, ip)
        self.nl.fdb_delete(at.vxlan, rec.mac, bridge=at.bridge)

    def _sync_all(self) -> None:
        for name in list(self._attached):
            try:
                self._sync(name)
            except DriverError as err:
                log.error("overlay %s: cannot program peers: %s", name, err)
        self.last_sync = time.monotonic()

    def _sync(self, name: str) -> None:
        """Make the kernel's entries for ``name`` exactly the remote endpoints we know."""
        if not self.listed.is_set():
            return  # we know nothing yet: the kernel's entries (of the last run) stay
        at = self._attached[name]
        peers = list(self._peers.get(name, {}).values())
        fdb_want = {p.mac: p.vtep for p in peers}
        neigh_want = {ip: p.mac for p in peers for ip in (p.ip, p.ip6) if ip}
        fdb_have, neigh_have = self.nl.fdb_entries(at.vxlan), self.nl.neigh_entries(at.vxlan)
        for ip in neigh_have.keys() - neigh_want.keys():
            self.nl.neigh_delete(at.vxlan, ip)
        for mac in fdb_have.keys() - fdb_want.keys():
            self.nl.fdb_delete(at.vxlan, mac, bridge=at.bridge)
        for mac, vtep in fdb_want.items():
            if fdb_have.get(mac) != vtep:
                self.nl.fdb_replace(at.vxlan, mac, vtep)
        for ip, mac in neigh_want.items():
            if neigh_have.get(ip) != mac:
                self.nl.neigh_replace(at.vxlan, ip, mac)

    def peers(self, name: str) -> dict[str, PeerRecord]:
        """The remote endpoints known for ``name`` (for status; a copy)."""
        return dict(self._peers.get(name, {}))
