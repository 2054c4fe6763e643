"""``ClusterStore`` on etcd v3, over aetcd's gRPC stubs, behind a synchronous API.

Why the stubs (``aetcd.rpc``) and not ``aetcd.Client``: the client only builds plaintext
channels, fixes one timeout at construction, and its watcher drops the responses that
carry no events, so progress notifications and the revision of a batch never reach the
caller. The stubs give all of that; the rules of OVERLAY.md §4 are applied here.

Threading: the store owns an asyncio loop in a daemon thread. Every method submits a
coroutine to it and waits at most ``timeout``. Nothing connects until the first call,
so building a store never blocks and never fails because etcd is down.

Failover: one channel per endpoint. A call first finds a member whose channel is
connected (a refused or unreachable member is skipped within its connect budget), then
sends. A read that fails in transport is retried once on the next member; a write never
is: once it may have left the client it raises ``Indeterminate``. A write that could not
reach any member at all raises plain ``StoreUnavailable`` (it was never sent).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import queue
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
from aetcd import rpc
from aetcd.utils import prefix_range_end

from .base import (
    Absent,
    Compacted,
    Condition,
    Delete,
    DeletePrefix,
    Entry,
    Event,
    Indeterminate,
    LeaseNotFound,
    Put,
    StoreUnavailable,
    TxnResult,
    Unchanged,
    WatchBatch,
    Write,
)

T = TypeVar("T")
# Answers that say the request was refused: nothing was written, retrying cannot help.
_DEFINITE = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
)
_CHANNEL_OPTIONS = (
    # gRPC's default back-off (1 s doubling to 120 s) would keep a restarted member
    # unused for minutes; etcd members come back within seconds.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# A watch stream's requests carry this so a member that lost its leader cancels the
# watch instead of going silent (etcd's WithRequireLeader).
_REQUIRE_LEADER = (("hasleader", "true"),)
_End = object()


class _NotSent(StoreUnavailable):
    """No member could be reached: the request never left the client."""


def parse_endpoint(url: str) -> tuple[str, str]:
    """``http(s)://host:port`` → (scheme, gRPC target ``host:port``); ValueError otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad etcd endpoint {url!r}: {e}") from None
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or port is None
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"bad etcd endpoint {url!r}: expected http(s)://host:port")
    host = parts.hostname
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    return parts.scheme, f"{host}:{port}"


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read etcd TLS {what} file {path}: {e.strerror or e}") from None


def _credentials(
    schemes: set[str], ca: Path | None, cert: Path | None, key: Path | None
) -> grpc.ChannelCredentials | None:
    if len(schemes) > 1:
        raise ValueError("etcd endpoints mix http:// and https://")
    if (cert is None) != (key is None):
        raise ValueError("etcd TLS needs both a client certificate and its key, or neither")
    if schemes == {"http"} and ca is None and cert is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_file(ca, "CA") if ca else None,
        private_key=_read_file(key, "key") if key else None,
        certificate_chain=_read_file(cert, "certificate") if cert else None,
    )


class EtcdWatch:
    """One etcd watch stream; iterate from any thread, ``cancel`` from any other."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._task: asyncio.Task[None] | None = None

    def _put(self, item: object) -> None:
        self._queue.put(item)

    def __iter__(self) -> Iterator[WatchBatch]:
        while not self._cancelled.is_set():
            item = self._queue.get()
            if item is _End or self._cancelled.is_set():
                return
            if isinstance(item, BaseException):
                self._cancelled.set()
                raise item
            assert isinstance(item, WatchBatch)
            yield item

    def cancel(self) -> None:
        self._cancelled.set()
        self._queue.put(_End)
        if not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped meanwhile
                self._loop.call_soon_threadsafe(self._stop)

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


class EtcdStore:
    def __init__(  # noqa: PLR0917 - the positional order of the driver's settings
        self,
        endpoints: list[str],
        prefix: str = "/pyoverlay",
        timeout: float = 3.0,
        ca: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        *,
        progress_interval: float = 5.0,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints given")
        parsed = [parse_endpoint(e) for e in endpoints]
        self._creds = _credentials({s for s, _ in parsed}, ca, cert, key)
        self._targets = [t for _, t in parsed]
        self._where = ",".join(endpoints)
        self._prefix = prefix.rstrip("/") + "/"
        self._timeout = timeout
        # A quiet watch asks for progress this often; the answer also proves the stream alive.
        self._progress_interval = progress_interval
        self._connect_budget = min(1.0, timeout / 2)
        self._channels: list[grpc.aio.Channel | None] = [None] * len(self._targets)
        self._current = 0
        self._watches: set[EtcdWatch] = set()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="etcd-store", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"EtcdStore({self._where!r}, prefix={self._prefix!r})"

    # -- the sync façade ----------------------------------------------------------------
    def _submit(self, coro: Coroutine[Any, Any, T], write: bool, op: str) -> T:
        if self._closed:
            coro.close()
            raise StoreUnavailable(f"etcd at {self._where}: {op}: store closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            # The coroutine keeps its own deadline; this is the backstop if the loop stalls.
            return fut.result(self._timeout + 1.0)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            kind = Indeterminate if write else StoreUnavailable
            raise kind(f"etcd at {self._where}: {op}: no answer within {self._timeout:g}s") from None

    def _key(self, key: str) -> bytes:
        return (self._prefix + key).encode()

    def _rel(self, raw: bytes) -> str:
        return raw.decode()[len(self._prefix) :]

    def _entry(self, kv: Any) -> Entry:
        return Entry(bytes(kv.value), kv.mod_revision, kv.create_revision, kv.lease)

    # -- connection handling (loop thread) -------------------------------------------------
    def _channel(self, i: int) -> grpc.aio.Channel:
        ch = self._channels[i]
        if ch is None:
            if self._creds is None:
                ch = grpc.aio.insecure_channel(self._targets[i], options=_CHANNEL_OPTIONS)
            else:
                ch = grpc.aio.secure_channel(self._targets[i], self._creds, options=_CHANNEL_OPTIONS)
            self._channels[i] = ch
        return ch

    async def _settled(self, ch: grpc.aio.Channel) -> None:
        state = ch.get_state(try_to_connect=True)
        while state in (grpc.ChannelConnectivity.IDLE, grpc.ChannelConnectivity.CONNECTING):
            await ch.wait_for_state_change(state)
            state = ch.get_state(try_to_connect=True)

    async def _connected(self, deadline: float, op: str) -> tuple[int, grpc.aio.Channel]:
        """A connected channel, trying members in turn from the current one.

        Members that refuse are retried (their back-off is short) for the connect
        budget only: when every member is down, waiting out the whole deadline would
        only delay the error the user gets.
        """
        loop = asyncio.get_running_loop()
        give_up = min(deadline, loop.time() + self._connect_budget)
        n = len(self._targets)
        while True:
            for step in range(n):
                i = (self._current + step) % n
                ch = self._channel(i)
                budget = min(deadline - loop.time(), self._connect_budget)
                if budget <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settled(ch), budget)
                if ch.get_state() == grpc.ChannelConnectivity.READY:
                    self._current = i
                    return i, ch
            left = give_up - loop.time()
            if left <= 0:
                raise _NotSent(f"etcd at {self._where}: {op}: no member reachable")
            await asyncio.sleep(min(0.1, left))

    def _rotate(self, i: int) -> None:
        if self._current == i:
            self._current = (i + 1) % len(self._targets)

    def _translate(self, e: grpc.aio.AioRpcError, op: str, write: bool) -> Exception:
        code, details = e.code(), e.details() or ""
        msg = f"etcd at {self._where}: {op}: {details} ({code.name})"
        if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
            return LeaseNotFound(msg)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            return ValueError(msg)
        # Anything but a refusal (a timeout, a leader change, a broken connection, or an
        # etcd error gRPC calls UNKNOWN) may have committed.
        return Indeterminate(msg) if write and code not in _DEFINITE else StoreUnavailable(msg)

    async def _rpc(self, op: str, write: bool, call: Callable[[grpc.aio.Channel, float], Awaitable[T]]) -> T:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self._timeout
        # A read may be retried once on another member, so its first try gets half the
        # time: a member that is alive but frozen or cut off answers nothing until then.
        attempt_deadline = start + self._timeout / 2 if not write and len(self._targets) > 1 else deadline
        retried = False
        while True:
            i, ch = await self._connected(attempt_deadline, op)
            try:
                return await call(ch, max(attempt_deadline - loop.time(), 0.001))
            except grpc.aio.AioRpcError as e:
                if e.code() in _DEFINITE:
                    raise self._translate(e, op, write) from None
                self._rotate(i)
                if write or loop.time() >= deadline:
                    raise self._translate(e, op, write) from None
                if e.code() == grpc.StatusCode.UNAVAILABLE and "leader" in (e.details() or ""):
                    # "leader changed" / "no leader": refused during an election, and every
                    # member says so until it ends; ask again shortly (reads only).
                    await asyncio.sleep(min(0.1, deadline - loop.time()))
                    continue
                if retried:
                    raise self._translate(e, op, write) from None
                retried, attempt_deadline = True, deadline

    def _read(self, op: str, call: Callable[[grpc.aio.Channel, float], Awaitable[T]]) -> T:
        return self._submit(self._rpc(op, False, call), False, op)

    def _write(self, op: str, call: Callable[[grpc.aio.Channel, float], Awaitable[T]]) -> T:
        return self._submit(self._rpc(op, True, call), True, op)

    # -- KV ---------------------------------------------------------------------------------
    def get(self, key: str) -> Entry | None:
        async def call(ch: grpc.aio.Channel, t: float) -> Entry | None:
            resp = await rpc.KVStub(ch).Range(rpc.RangeRequest(key=self._key(key)), timeout=t)
            return self._entry(resp.kvs[0]) if resp.kvs else None

        return self._read(f"get {key}", call)

    def range(self, prefix: str) -> tuple[dict[str, Entry], int]:
        start = self._key(prefix)

        async def call(ch: grpc.aio.Channel, t: float) -> tuple[dict[str, Entry], int]:
            req = rpc.RangeRequest(key=start, range_end=prefix_range_end(start))
            resp = await rpc.KVStub(ch).Range(req, timeout=t)
            return {self._rel(kv.key): self._entry(kv) for kv in resp.kvs}, resp.header.revision

        return self._read(f"range {prefix}", call)

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        return self._txn(f"create {key}", [Absent(key)], [Put(key, value, lease)]).succeeded

    def replace(self, key: str, value: bytes, mod_revision: int, lease: int = 0) -> bool:
        return self._txn(f"replace {key}", [Unchanged(key, mod_revision)], [Put(key, value, lease)]).succeeded

    def delete(self, key: str, mod_revision: int | None = None) -> bool:
        if mod_revision is None:

            async def call(ch: grpc.aio.Channel, t: float) -> bool:
                resp = await rpc.KVStub(ch).DeleteRange(rpc.DeleteRangeRequest(key=self._key(key)), timeout=t)
                return bool(resp.deleted)

            return self._write(f"delete {key}", call)
        req = self._txn_request([Unchanged(key, mod_revision)], [Delete(key)])

        async def cas(ch: grpc.aio.Channel, t: float) -> bool:
            resp = await rpc.KVStub(ch).Txn(req, timeout=t)
            return bool(resp.succeeded and resp.responses[0].response_delete_range.deleted)

        return self._write(f"delete {key}", cas)

    def delete_prefix(self, prefix: str) -> int:
        start = self._key(prefix)

        async def call(ch: grpc.aio.Channel, t: float) -> int:
            req = rpc.DeleteRangeRequest(key=start, range_end=prefix_range_end(start))
            return int((await rpc.KVStub(ch).DeleteRange(req, timeout=t)).deleted)

        return self._write(f"delete prefix {prefix}", call)

    def txn(self, conditions: Sequence[Condition], writes: Sequence[Write]) -> TxnResult:
        return self._txn("txn", conditions, writes)

    def _txn(self, op: str, conditions: Sequence[Condition], writes: Sequence[Write]) -> TxnResult:
        req = self._txn_request(conditions, writes)

        async def call(ch: grpc.aio.Channel, t: float) -> TxnResult:
            resp = await rpc.KVStub(ch).Txn(req, timeout=t)
            if resp.succeeded:
                return TxnResult(True, resp.header.revision)
            # The failure branch read every compared key at the txn's revision, so which
            # condition failed is known exactly, not guessed from a later read.
            seen = {self._rel(kv.key): kv for r in resp.responses for kv in r.response_range.kvs}
            failed = tuple(c for c in conditions if not _holds(c, seen.get(c.key)))
            return TxnResult(False, resp.header.revision, failed)

        return self._write(op, call)

    def _txn_request(self, conditions: Sequence[Condition], writes: Sequence[Write]) -> Any:
        compare = []
        for c in conditions:
            if isinstance(c, Absent):
                compare.append(
                    rpc.Compare(key=self._key(c.key), result=rpc.Compare.EQUAL, target=rpc.Compare.VERSION, version=0)
                )
            else:
                compare.append(
                    rpc.Compare(
                        key=self._key(c.key),
                        result=rpc.Compare.EQUAL,
                        target=rpc.Compare.MOD,
                        mod_revision=c.mod_revision,
                    )
                )
        success = [self._op(w) for w in writes]
        failure = [
            rpc.RequestOp(request_range=rpc.RangeRequest(key=self._key(k)))
            for k in dict.fromkeys(c.key for c in conditions)
        ]
        return rpc.TxnRequest(compare=compare, success=success, failure=failure)

    def _op(self, w: Write) -> Any:
        if isinstance(w, Put):
            return rpc.RequestOp(request_put=rpc.PutRequest(key=self._key(w.key), value=w.value, lease=w.lease))
        if isinstance(w, Delete):
            return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=self._key(w.key)))
        assert isinstance(w, DeletePrefix)
        start = self._key(w.prefix)
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=start, range_end=prefix_range_end(start)))

    def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (an operator action; tests use it for ``Compacted``)."""

        async def call(ch: grpc.aio.Channel, t: float) -> None:
            try:
                await rpc.KVStub(ch).Compact(rpc.CompactionRequest(revision=revision, physical=True), timeout=t)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.OUT_OF_RANGE and "compacted" in (e.details() or ""):
                    raise Compacted(0) from None
                raise

        self._write(f"compact {revision}", call)

    # -- leases ------------------------------------------------------------------------------
    def grant(self, ttl: int) -> int:
        async def call(ch: grpc.aio.Channel, t: float) -> int:
            resp = await rpc.LeaseStub(ch).LeaseGrant(rpc.LeaseGrantRequest(TTL=ttl), timeout=t)
            if resp.error:
                raise StoreUnavailable(f"etcd at {self._where}: grant lease: {resp.error}")
            return int(resp.ID)

        return self._write(f"grant lease ttl {ttl}s", call)

    def keepalive(self, lease: int) -> int:
        async def call(ch: grpc.aio.Channel, t: float) -> int:
            stream = rpc.LeaseStub(ch).LeaseKeepAlive(timeout=t)
            try:
                await stream.write(rpc.LeaseKeepAliveRequest(ID=lease))
                resp = await stream.read()
            finally:
                stream.cancel()
            if resp is grpc.aio.EOF:
                raise StoreUnavailable(f"etcd at {self._where}: keepalive {lease:x}: stream closed")
            return max(int(resp.TTL), 0)

        return self._read(f"keepalive lease {lease:x}", call)

    def revoke(self, lease: int) -> None:
        async def call(ch: grpc.aio.Channel, t: float) -> None:
            try:
                await rpc.LeaseStub(ch).LeaseRevoke(rpc.LeaseRevokeRequest(ID=lease), timeout=t)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:  # already gone: what revoke wants
                    raise

        self._write(f"revoke lease {lease:x}", call)

    # -- watch -------------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int) -> EtcdWatch:
        w = EtcdWatch(self._loop)
        self._submit(self._open_watch(w, prefix, start_revision), False, f"watch {prefix}")
        return w

    async def _open_watch(self, w: EtcdWatch, prefix: str, start_revision: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        op = f"watch {prefix}"
        _, ch = await self._connected(deadline, op)
        start = self._key(prefix)
        stream = rpc.WatchStub(ch).Watch(metadata=_REQUIRE_LEADER)
        try:
            await stream.write(
                rpc.WatchRequest(
                    create_request=rpc.WatchCreateRequest(
                        key=start,
                        range_end=prefix_range_end(start),
                        start_revision=start_revision,
                        progress_notify=True,
                    )
                )
            )
            created = await asyncio.wait_for(stream.read(), deadline - loop.time())
            if created is grpc.aio.EOF or not created.created or created.canceled:
                reason = getattr(created, "cancel_reason", "") or "stream closed"
                raise StoreUnavailable(f"etcd at {self._where}: {op}: {reason}")
            if start_revision <= created.header.revision:
                await self._check_compacted(ch, stream, start, start_revision, deadline)
        except TimeoutError:
            stream.cancel()
            raise StoreUnavailable(f"etcd at {self._where}: {op}: not created within {self._timeout:g}s") from None
        except grpc.aio.AioRpcError as e:
            stream.cancel()
            raise self._translate(e, op, False) from None
        except BaseException:
            stream.cancel()
            raise
        w._task = loop.create_task(self._pump(w, stream, op))
        self._watches.add(w)

    async def _check_compacted(
        self, ch: grpc.aio.Channel, stream: Any, start: bytes, rev: int, deadline: float
    ) -> None:
        """A historical watch learns of compaction only from a later stream message, so
        ask now (a range at ``rev`` fails the same way) and raise it from ``watch``."""
        loop = asyncio.get_running_loop()
        req = rpc.RangeRequest(key=start, range_end=prefix_range_end(start), revision=rev, count_only=True)
        try:
            await rpc.KVStub(ch).Range(req, timeout=max(deadline - loop.time(), 0.001))
            return
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.OUT_OF_RANGE or "compacted" not in (e.details() or ""):
                raise
        # Compacted: the stream names the horizon within a sync tick (100 ms).
        with contextlib.suppress(TimeoutError):
            while True:
                resp = await asyncio.wait_for(stream.read(), deadline - loop.time())
                if resp is grpc.aio.EOF or resp.compact_revision:
                    break
        stream.cancel()
        raise Compacted(0 if resp is grpc.aio.EOF else resp.compact_revision)

    async def _pump(self, w: EtcdWatch, stream: Any, op: str) -> None:
        reading: asyncio.Future[Any] | None = None
        try:
            while True:
                # One read outstanding at a time, never cancelled on a quiet spell
                # (cancelling a read cancels the whole gRPC call).
                reading = reading or asyncio.ensure_future(stream.read())
                done, _ = await asyncio.wait({reading}, timeout=self._progress_interval)
                if not done:
                    await stream.write(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))
                    done, _ = await asyncio.wait({reading}, timeout=self._timeout)
                    if not done:
                        raise StoreUnavailable(f"etcd at {self._where}: {op}: stream silent for {self._timeout:g}s")
                resp, reading = reading.result(), None
                if resp is grpc.aio.EOF:
                    raise StoreUnavailable(f"etcd at {self._where}: {op}: stream closed")
                if resp.compact_revision:
                    raise Compacted(resp.compact_revision)
                if resp.canceled:
                    raise StoreUnavailable(f"etcd at {self._where}: {op}: cancelled: {resp.cancel_reason}")
                w._put(self._batch(resp))
        except asyncio.CancelledError:
            w._put(_End)
            raise
        except grpc.aio.AioRpcError as e:
            w._put(StoreUnavailable(f"etcd at {self._where}: {op}: {e.details() or e.code().name}"))
        except (StoreUnavailable, Compacted) as e:
            w._put(e)
        finally:
            stream.cancel()
            if reading is not None:
                reading.cancel()
            self._watches.discard(w)

    def _batch(self, resp: Any) -> WatchBatch:
        events = tuple(
            Event(
                self._rel(ev.kv.key),
                self._entry(ev.kv) if ev.type == rpc.Event.PUT else None,
                ev.kv.mod_revision,
            )
            for ev in resp.events
        )
        # A catch-up response is stamped with the store's current revision even when
        # more history follows, so resume from its last event, not from its header.
        return WatchBatch(events, events[-1].revision if events else resp.header.revision)

    # -- life cycle --------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            fut.result(self._timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._timeout)
        if not self._thread.is_alive():
            self._loop.close()

    async def _shutdown(self) -> None:
        for w in list(self._watches):
            w.cancel()
            if w._task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await w._task
        for ch in self._channels:
            if ch is not None:
                await ch.close()


def _holds(c: Condition, kv: Any) -> bool:
    if isinstance(c, Absent):
        return kv is None
    return (kv.mod_revision if kv is not None else 0) == c.mod_revision
