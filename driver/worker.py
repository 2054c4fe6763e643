"""One worker thread runs every state-changing call, in arrival order.

Serialising the calls is what keeps them simple: no per-network locks, no two requests
racing for one address, and reconciliation at start finishes before the first call that
could observe half-reconciled state. Calls are short (netlink, an fsync, one
iptables-restore), and each wait is bounded so dockerd, which has no timeout of its own
and holds its locks meanwhile, always gets an answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from driver.errors import Unavailable

T = TypeVar("T")
log = logging.getLogger(__name__)


class Worker:
    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pyoverlay-worker")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        fut = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.timeout)
        except TimeoutError:
            raise Unavailable(
                f"the driver is busy: the call did not finish within {self.timeout:.0f}s (try again)"
            ) from None

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` in turn, not waiting for it; a failure is logged, not lost."""
        self._pool.submit(fn, *args).add_done_callback(_log_failure)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _log_failure(fut: Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("background call failed", exc_info=fut.exception())
