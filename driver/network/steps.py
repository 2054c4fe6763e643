"""Named, ordered steps with rollback: a failure half-way undoes what was done.

Each step is logged by name, so a failure describes itself ("create veth …: File
exists"), and the undo callbacks run in reverse order.

Every step, and every ``checkpoint`` of the calls that have no rollback (deletes, ports,
IPAM, reconciliation), is a named point ``"<call> <object>: <step>"``, e.g. ``delete
network 1a2b3c4d5e6f: remove devices``, logged at debug as ``step: <name>``. ``fail_step``
is a test hook (set with ``PYOVERLAY_FAIL_STEP``): the first point whose name, or whose
step part (after ``": "``), starts with it fails, to prove rollback; with a ``crash:``
prefix the process kills itself there instead, as a ``kill -9`` at that moment would, to
prove recovery at the next start; with ``stall=SECONDS:`` the first point it matches
blocks the worker that long, as a netlink answer stuck behind the rtnl lock would, to
prove that a slow call neither hangs dockerd nor leaves anything behind.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import Any

from driver.errors import DriverError
from driver.worker import note_step

log = logging.getLogger(__name__)


class Steps:
    fail_step: str | None = None

    def __init__(self, what: str) -> None:
        self.what = what
        self._undo = ExitStack()

    def __enter__(self) -> Steps:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self._undo.pop_all()
        else:
            log.warning("%s failed (%s); rolling back", self.what, exc)
            self._undo.close()

    def run(self, name: str, do: Callable[[], Any], undo: Callable[[], Any] | None = None) -> Any:
        checkpoint(f"{self.what}: {name}")
        result = do()
        if undo is not None:
            self._undo.callback(_quietly, name, undo)
        return result


def checkpoint(name: str) -> None:
    """A named point of a state-changing call (``"<call> <object>: <step>"``): logged, and
    where ``PYOVERLAY_FAIL_STEP`` injects its fault."""
    log.debug("step: %s", name)
    note_step(name)
    if Steps.fail_step:
        _inject(Steps.fail_step, name)


def _parse(spec: str) -> tuple[str, float, str]:
    """``[crash:|stall=SECONDS:]prefix`` as (kind, seconds, prefix)."""
    if spec.startswith("crash:"):
        return "crash", 0.0, spec.removeprefix("crash:")
    head, sep, rest = spec.partition(":")
    if sep and head.startswith("stall="):
        try:
            return "stall", float(head.removeprefix("stall=")), rest
        except ValueError:
            pass
    return "fail", 0.0, spec


def matches(spec: str, name: str) -> bool:
    """Whether the fault ``spec`` fires at the point ``name``."""
    prefix = _parse(spec)[2]
    return name.startswith(prefix) or name.partition(": ")[2].startswith(prefix)


_stalled: set[str] = set()  # a stall is a one-off slow answer: once per process


def _inject(spec: str, name: str) -> None:
    if not matches(spec, name):
        return
    kind, seconds, _ = _parse(spec)
    if kind == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "stall":
        if spec not in _stalled:
            _stalled.add(spec)
            log.warning("step: %s: stalling %.0fs (PYOVERLAY_FAIL_STEP)", name, seconds)
            time.sleep(seconds)
        return
    raise DriverError(f"{name}: injected failure (PYOVERLAY_FAIL_STEP)")


def _quietly(name: str, undo: Callable[[], Any]) -> None:
    # A failing undo must not hide the original error nor stop the other undos.
    try:
        undo()
    except Exception as err:
        log.error("rollback of %r failed: %s", name, err)
