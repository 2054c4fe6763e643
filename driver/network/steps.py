"""Named, ordered steps with rollback: a failure half-way undoes what was done.

Each step is logged by name, so a failure describes itself ("create veth …: File
exists"), and the undo callbacks run in reverse order.

Every step, and every ``checkpoint`` of the calls that have no rollback (deletes, ports,
IPAM, reconciliation), is a named point ``"<call> <object>: <step>"``, e.g. ``delete
network 1a2b3c4d5e6f: remove devices``, logged at debug as ``step: <name>``. ``fail_step``
is a test hook (set with ``PYOVERLAY_FAIL_STEP``): the first point whose name, or whose
step part (after ``": "``), starts with it fails, to prove rollback; with a ``crash:``
prefix the process kills itself there instead, as a ``kill -9`` at that moment would, to
prove recovery at the next start.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import Any

from driver.errors import DriverError

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
    if Steps.fail_step:
        _inject(Steps.fail_step, name)


def matches(spec: str, name: str) -> bool:
    """Whether the fault ``spec`` (``[crash:]prefix``) fires at the point ``name``."""
    prefix = spec.removeprefix("crash:")
    return name.startswith(prefix) or name.partition(": ")[2].startswith(prefix)


def _inject(spec: str, name: str) -> None:
    if not matches(spec, name):
        return
    if spec.startswith("crash:"):
        os.kill(os.getpid(), signal.SIGKILL)
    raise DriverError(f"{name}: injected failure (PYOVERLAY_FAIL_STEP)")


def _quietly(name: str, undo: Callable[[], Any]) -> None:
    # A failing undo must not hide the original error nor stop the other undos.
    try:
        undo()
    except Exception as err:
        log.error("rollback of %r failed: %s", name, err)
