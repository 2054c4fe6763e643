"""One worker thread runs every state-changing call, in arrival order.

Serialising the calls is what keeps them simple: no per-network locks, no two requests
racing for one address, and reconciliation at start finishes before the first call that
could observe half-reconciled state. Calls are short (netlink, an fsync, one
iptables-restore), and each wait is bounded so dockerd, which has no timeout of its own
and holds its locks meanwhile, always gets an answer.

A thread cannot be stopped from outside, and a call blocked in the kernel (a netlink
request waiting for the rtnl lock, an fsync on a dying disk) cannot be interrupted at
all. So when a caller stops waiting, the worker makes sure the call cannot do harm
later instead:

* a call that has not started yet is cancelled: it never runs, so it cannot change
  anything dockerd was told failed;
* a call already running is marked *given up*; it finishes in the background, and the
  calls that create something check ``ensure_wanted`` before they commit, so they roll
  back instead of leaving an object dockerd does not know about. Deletes simply finish.

Every call carries the caller's context variables (the request's IDs for log lines) and
the name of the step it is at, for ``busy()`` (status, and the 503's message).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from driver.errors import Unavailable

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class Call:
    name: str
    started: float | None = None  # monotonic, once the worker picked it up
    step: str = ""  # the last named step it reached (driver.network.steps)
    given_up: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> str:
        where = f" at {self.step!r}" if self.step else ""
        ran = time.monotonic() - self.started if self.started is not None else 0.0
        return f"{self.name}{where}, running for {ran:.0f}s"


class GivenUp(Unavailable):
    """Raised inside a call whose caller stopped waiting, so it rolls back."""


_local = threading.local()


def current() -> Call | None:
    """The call the worker thread runs now (None on any other thread)."""
    call: Call | None = getattr(_local, "call", None)
    return call


def note_step(name: str) -> None:
    call = current()
    if call is not None:
        call.step = name


def ensure_wanted(what: str) -> None:
    """Raise ``GivenUp`` if the caller of the current call no longer waits for it: the
    answer would be thrown away, so what ``what`` would commit must be undone."""
    call = current()
    if call is not None and call.given_up.is_set():
        raise GivenUp(f"{what}: its caller stopped waiting (the call took too long)")


class Worker:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyoverlay-worker")
        self._running: Call | None = None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        call = Call(getattr(fn, "__name__", "call"))
        fut = self._pool.submit(self._execute, call, contextvars.copy_context(), fn, *args)
        waited = asyncio.wrap_future(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(waited), self.timeout)
        except TimeoutError:
            call.given_up.set()
            # Nobody awaits it any more: its outcome is logged (_execute, the rollback).
            waited.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise self._busy_error(call, fut) from None

    def _busy_error(self, call: Call, fut: Future[Any]) -> Unavailable:
        limit = f"{self.timeout:.0f}s"
        if fut.cancel():
            ahead = self.busy()
            why = f"the driver is busy with {ahead}" if ahead else "the driver is busy"
            return Unavailable(f"{why}: {call.name} waited {limit} and was not run (try again)")
        where = f" (at {call.step!r})" if call.step else ""
        log.warning("%s did not finish within %s%s; it goes on in the background", call.name, limit, where)
        return Unavailable(
            f"{call.name} did not finish within {limit}{where}: it is undone if it created something (try again)"
        )

    def busy(self) -> str | None:
        """What the worker is doing now, if anything ("<call> at <step>, running for Ns")."""
        running = self._running
        return running.describe() if running is not None else None

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` in turn, not waiting for it; a failure is logged, not lost."""
        call = Call(getattr(fn, "__name__", "background call"))
        self._pool.submit(self._execute, call, contextvars.copy_context(), fn, *args).add_done_callback(
            _log_failure
        )

    def _execute(self, call: Call, ctx: contextvars.Context, fn: Callable[..., T], *args: Any) -> T:
        call.started = time.monotonic()
        _local.call, self._running = call, call
        try:
            return ctx.run(fn, *args)
        finally:
            _local.call, self._running = None, None
            if call.given_up.is_set():
                log.warning("%s ended %.1fs after it started; its caller had stopped waiting",
                            call.name, time.monotonic() - call.started)  # fmt: skip

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _log_failure(fut: Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("background call failed", exc_info=fut.exception())
