"""Notice when someone else removes or rewrites our rules, and put them back.

``iptables -F``, a firewalld reload or another tool rewriting FORWARD takes our chains or
jumps away; before this, egress and isolation stayed broken until the driver restarted.
A thread of its own reads the tables every ``interval`` seconds (one iptables-save per
family that has rules: cheap when nothing changed) and compares them with what was
applied (``Iptables.problems``). It never changes anything itself: a repair is submitted
to the worker like a request, so it never races one, and no request ever waits on the
check. On the worker the comparison is made again (an apply may have happened since the
check read the tables) before anything is rewritten: the same one transaction per family
as any apply, with every rule and jump exactly once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from driver.errors import DriverError
from driver.firewall import Firewall
from driver.firewall.iptables import REFRESH, Iptables

log = logging.getLogger(__name__)


class Checked(Protocol):
    family: str

    def problems(self) -> list[str]: ...

    def forget(self) -> None: ...


class FirewallWatch:
    def __init__(
        self,
        appliers: Sequence[Checked],
        submit: Callable[..., None],
        sync: Callable[[], None],
        *,
        interval: float = 2.0,
    ) -> None:
        self.appliers = list(appliers)
        self.submit = submit
        self.sync = sync
        self.interval = interval
        self.repairs = 0  # rewrites done (status, tests)
        self._pending = threading.Event()  # a repair is queued: don't queue another
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> FirewallWatch:
        self._thread = threading.Thread(target=self._loop, name="pyoverlay-firewall-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def _loop(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                self.check()
                failing = False
            except RuntimeError:  # the worker shut down: the driver is stopping
                return
            except Exception as err:
                if not failing:  # once per spell, not every two seconds
                    log.warning("firewall check failed (%s); will retry", err)
                    failing = True

    def check(self) -> bool:
        """Queue a repair if anything is wrong; True when one was queued."""
        if self._pending.is_set():
            return False
        found = [f"{a.family}: {p}" for a in self.appliers for p in a.problems()]
        if not found:
            return False
        damage = [f for f in found if REFRESH not in f]
        if damage:
            log.warning("firewall changed by someone else (%s); restoring it", "; ".join(damage))
        else:
            log.info("firewall: %s; reapplying", "; ".join(f.replace(REFRESH, "") for f in found))
        self._pending.set()
        try:
            self.submit(self._repair)
        except BaseException:
            self._pending.clear()
            raise
        return True

    def _repair(self) -> None:
        """On the worker."""
        try:
            broken = [a for a in self.appliers if a.problems()]
            if not broken:
                return
            for a in broken:
                a.forget()
            try:
                self.sync()
            except DriverError as err:  # e.g. the xtables lock still held: retried later
                log.warning("firewall repair failed (%s); will retry", err)
                return
            self.repairs += 1
            still = [f"{a.family}: {p}" for a in broken for p in a.problems()]
            if still:
                log.error("firewall still differs after restoring it: %s", "; ".join(still))
            else:
                log.info("firewall restored (%s)", ", ".join(a.family for a in broken))
        finally:
            self._pending.clear()


class _Service(Protocol):
    @property
    def firewall(self) -> Firewall: ...

    def sync_firewall(self) -> None: ...


def watch_firewall(network: _Service, submit: Callable[..., None], interval: float) -> FirewallWatch | None:
    """Start the check for ``network``'s firewall (what ``driver.server`` calls); 0: off."""
    appliers = [a for a in (network.firewall.v4, network.firewall.v6) if isinstance(a, Iptables)]
    if interval <= 0 or not appliers:
        return None
    return FirewallWatch(appliers, submit, network.sync_firewall, interval=interval).start()
