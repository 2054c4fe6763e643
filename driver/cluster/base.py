"""The cluster store contract: what pyoverlay needs from etcd, and nothing more.

Only *cluster* facts live here (overlay identities, VNIs, overlay pools and addresses,
hosts and their VTEPs, endpoints other hosts must program). What only this host needs
stays in the local store, so the data plane, restarts and reconciliation work while the
cluster store is down.

Rules every implementation honours (etcd's, see reference OVERLAY.md §4):

* **Revisions.** Every write gets a store-wide revision; an ``Entry`` carries the
  ``mod_revision`` of its last write and ``create_revision`` of its creation.
* **No read-modify-write.** Writes are conditional: ``create`` succeeds only if the key
  is absent, ``replace`` only if its ``mod_revision`` is still the one read, ``txn``
  only if all its conditions hold. A lost race is a ``False`` result, not an error.
* **Deadlines.** Every call returns or raises within ``timeout`` seconds; a call that
  cannot reach a quorum raises ``StoreUnavailable``. A *write* that ran out of time may
  still commit later: it raises ``Indeterminate`` (a ``StoreUnavailable``), and the
  caller re-reads to find out (values carry their writer's identity for that).
* **Leases.** ``grant(ttl)`` returns a lease id; keys written with it vanish when it
  expires or is revoked. ``keepalive`` renews it and returns the remaining TTL, 0 when
  the lease is gone (the holder must then grant a new one and rewrite its keys). A
  write naming a gone lease raises ``LeaseNotFound`` and writes nothing.
* **Watch with resume.** ``watch(prefix, start_revision)`` yields batches of ``Event``s
  in revision order, from ``start_revision`` on. After ``range`` at revision R, a watch
  from R + 1 misses nothing. If ``start_revision`` was compacted away it raises
  ``Compacted`` (never silently skips), from ``watch`` or, when the store only learns it
  from the stream, from iteration; the caller re-lists. A broken stream raises
  ``StoreUnavailable``. A quiet watch yields empty batches (progress notifications)
  whose revision keeps the resume point current.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from driver.errors import Unavailable


class StoreUnavailable(Unavailable):
    """The cluster store did not answer within the call's deadline (or refused it)."""


class Indeterminate(StoreUnavailable):
    """A write ran out of time: it may or may not have committed."""


class LeaseNotFound(StoreUnavailable):
    """A write named a lease that no longer exists (expired or revoked); nothing was
    written. The holder grants a new lease and rewrites its keys."""


class Compacted(Exception):
    """A watch's start revision is older than the store's compaction horizon."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (horizon {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class Entry:
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Event:
    key: str
    entry: Entry | None  # None: the key was deleted (or its lease expired)
    revision: int


@dataclass(frozen=True)
class WatchBatch:
    events: tuple[Event, ...]
    revision: int  # resume from revision + 1


# -- transactions: a list of conditions, then the writes applied if all hold ----------
@dataclass(frozen=True)
class Absent:
    key: str


@dataclass(frozen=True)
class Unchanged:
    key: str
    mod_revision: int


Condition = Absent | Unchanged


@dataclass(frozen=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True)
class Delete:
    key: str


@dataclass(frozen=True)
class DeletePrefix:
    prefix: str


Write = Put | Delete | DeletePrefix


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    failed: tuple[Condition, ...] = field(default=())  # which conditions did not hold


class Watch(Protocol):
    def __iter__(self) -> Iterator[WatchBatch]: ...

    def cancel(self) -> None:
        """Stop the watch; a thread blocked in iteration returns promptly."""


class ClusterStore(Protocol):
    """Keys are ``/``-separated strings (the store adds its prefix); values are bytes."""

    def get(self, key: str) -> Entry | None: ...

    def range(self, prefix: str) -> tuple[dict[str, Entry], int]:
        """Every key under ``prefix`` and the store revision the answer reflects."""

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Write ``key`` if it does not exist; False if it does."""

    def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        """Overwrite ``key`` if it was last written at ``mod_revision``; False otherwise."""

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        """Delete ``key`` (only if unchanged since ``mod_revision``, when given); False if
        it was absent or changed."""

    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; the number deleted."""

    def txn(self, conditions: Sequence[Condition], writes: Sequence[Write]) -> TxnResult: ...

    def grant(self, ttl: int) -> int: ...

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; the remaining TTL in seconds, 0 if the lease no longer exists."""

    def revoke(self, lease: int) -> None: ...

    def watch(self, prefix: str, start_revision: int) -> Watch: ...

    def close(self) -> None: ...
