"""Applies a ``Ruleset`` with iptables-restore: one transaction per family.

Each apply rewrites our chains whole (declaring a chain in ``iptables-restore
--noflush`` empties it first) and adds whichever of our jumps is missing, so the result
is the same however many times it runs: after a driver restart the rules for existing
endpoints are present exactly once. Removing everything is one transaction too.

One ``iptables-save`` (to see which jumps exist, and Docker's bridges) and one
``iptables-restore`` per change, and none when the wanted rules equal what this process
last applied: a ``docker run`` without ports changes no rule and costs no process. Until
dockerd's chains have been seen, an apply also reads the other backend (backend.py).

``problems`` is for the background check (watch.py), on its own thread: it only reads
the tables and the last applied state (one immutable ``Applied``, replaced whole by the
worker), so it never waits for, nor holds up, an apply.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from driver.errors import DriverError, Unavailable
from driver.firewall import backend as backends
from driver.firewall.intact import Snapshot, problems, snapshot
from driver.firewall.rules import JUMPS, Jump, Ruleset, our_chains, with_isolation
from driver.firewall.saved import Saved, docker_bridges, docker_rule_count, parse

log = logging.getLogger(__name__)

# Marks a finding that is no damage, only something to follow (watch.py logs it as info).
REFRESH = "refresh: "
Runner = Callable[[list[str], "str | None"], str]  # (argv, stdin) → stdout; raises DriverError
_LOCK_HELD = "holding the xtables lock"  # iptables' words when -w ran out
_RETRY_CAP = 60.0  # seconds between retries of an apply that keeps failing


@dataclass(frozen=True)
class Applied:
    generation: int
    backend: backends.Backend
    decided: bool  # dockerd's rules were seen in this backend
    wanted: Ruleset  # as the records want it
    complete: Ruleset  # as applied (with the isolation chain)
    bridges: tuple[str, ...]  # Docker's bridges it was applied for
    stale: bool = False  # a repair wants it all written again


class Iptables:
    def __init__(
        self,
        timeout: float,
        v6: bool = False,
        backend: str = "auto",
        *,
        run: Runner | None = None,
        which: Callable[[str], str | None] = shutil.which,
    ) -> None:
        self.timeout = timeout
        self.family = "ip6tables" if v6 else "iptables"
        self._run = run or self._subprocess
        self.backends = backends.candidates(self.family, which)
        self.forced: backends.BackendName | None = next((n for n in self.backends if n == backend), None)
        self.available = bool(self.backends)
        if not self.available:
            log.warning("%s-restore not found: no firewall rules will be programmed", self.family)
        elif backend != "auto" and self.forced is None:
            log.warning("%s backend %s not installed: detecting it instead", self.family, backend)
        self._default: backends.BackendName | None = None
        self._applied: Applied | None = None
        self._behind: tuple[float, int] | None = None  # (when, how many times) applies failed
        self._baseline: tuple[int, Snapshot] | None = None  # the checker's, see intact.py
        self.detected: backends.BackendName | None = None  # the checker saw dockerd here

    # -- running -------------------------------------------------------------------
    def _subprocess(self, args: list[str], stdin: str | None = None) -> str:
        try:
            proc = subprocess.run(
                args, input=stdin, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{args[0]} did not finish within {self.timeout:.0f}s") from None
        except OSError as err:
            raise DriverError(f"{args[0]}: {err.strerror}") from None
        if proc.returncode != 0:
            if _LOCK_HELD in proc.stderr:
                raise Unavailable(
                    f"{args[0]}: another program holds the xtables lock "
                    f"({os.environ.get('XTABLES_LOCKFILE', '/run/xtables.lock')}); gave up after {self.lock_wait}s"
                )
            raise DriverError(f"{args[0]} failed: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout

    @property
    def lock_wait(self) -> int:
        # Shorter than our own timeout, so a held lock is reported as that, not as a hang.
        return max(1, int(self.timeout) - 1)

    def _save(self, b: backends.Backend) -> Saved:
        return parse(self._run([b.save], None))

    # -- which backend -------------------------------------------------------------
    def _default_name(self) -> backends.BackendName:
        if self._default is None:
            try:
                self._default = backends.default_of(self._run([self.family, "-V"], None))
            except DriverError:
                self._default = "default"
        return self._default

    def _backend(self, name: backends.BackendName) -> backends.Backend:
        return self.backends.get(name) or self.backends.get("default") or next(iter(self.backends.values()))

    def _detect(self, current: backends.BackendName | None) -> tuple[backends.Backend, bool, Saved]:
        """The backend to use, whether dockerd's rules were seen there, and its tables."""
        if self.forced is not None:
            b = self.backends[self.forced]
            return b, True, self._save(b)
        named: dict[backends.BackendName, backends.Backend] = {
            n: b for n, b in self.backends.items() if n != "default"
        }
        if not named:  # an old iptables with one backend only
            b = self.backends["default"]
            return b, True, self._save(b)
        saves: dict[backends.BackendName, Saved] = {n: self._save(b) for n, b in named.items()}
        default = self._default_name()
        name, seen = backends.choose({n: docker_rule_count(s) for n, s in saves.items()},
                                     default if default in named else next(iter(named)), current)  # fmt: skip
        b = self._backend(name)
        return b, seen, saves.get(b.name) or self._save(b)

    # -- applying ------------------------------------------------------------------
    def apply(self, rs: Ruleset) -> None:
        if not self.available:
            return
        old = self._applied
        if old is not None and old.decided and not old.stale and rs == old.wanted:
            return
        if old is not None and (old.decided or self.detected == old.backend.name):
            b, decided, saved = old.backend, True, self._save(old.backend)
        else:
            b, decided, saved = self._detect(None if old is None else old.backend.name)
        if old is not None and old.backend != b and not old.complete.is_empty():
            log.info("%s: dockerd uses the %s backend; moving our rules there from %s", self.family, b.name,
                     old.backend.name)  # fmt: skip
            self._restore(old.backend, self._teardown(self._save(old.backend)))
        bridges = _bridges(saved, old)
        complete = with_isolation(rs, bridges)
        try:
            self._restore(b, self._teardown(saved) if rs.is_empty() else self._program(complete, saved))
        except DriverError:
            # The rules stay as they were (one transaction); the check retries the apply.
            failed = self._behind[1] + 1 if self._behind else 1
            self._behind = (time.monotonic(), failed)
            raise
        self._behind = None
        self._applied = Applied((old.generation + 1) if old else 1, b, decided, rs, complete, bridges)

    def _restore(self, b: backends.Backend, script: list[str]) -> None:
        if script:
            # -w: wait for the xtables lock; our own timeout bounds the wait.
            self._run([b.restore, "-w", str(self.lock_wait), "--noflush"], "\n".join(script) + "\n")

    def forget(self) -> None:
        """The next apply reprograms everything, and finds the backend again (a repair)."""
        old = self._applied
        self.detected = None
        if old is not None:
            # The backend is kept: it is where a move to another one tears our rules down.
            self._applied = replace(old, generation=old.generation + 1, decided=False, stale=True)

    # -- checking (the watch thread) -----------------------------------------------
    def problems(self) -> list[str]:
        """What is wrong with our rules now, or has moved under them (dockerd's backend,
        Docker's bridges: ``refresh``); reads the tables, changes nothing installed."""
        behind = self._behind
        if behind is not None and time.monotonic() - behind[0] >= min(_RETRY_CAP, 2.0**behind[1]):
            # The records moved on without the rules: a failed apply is retried, less and
            # less often while it keeps failing (each attempt may hold the worker a while).
            return [f"{REFRESH}the last apply failed ({behind[1]} time(s) in a row); applying again"]
        applied = self._applied
        if not self.available or applied is None or applied.complete.is_empty():
            return []
        saved = self._save(applied.backend)
        found: list[str] = []
        if self.forced is None and not applied.decided and self.detected != applied.backend.name:
            b, seen, _ = self._detect(applied.backend.name)
            if seen and b != applied.backend:
                found.append(f"{REFRESH}dockerd's rules are in the {b.name} backend, ours in {applied.backend.name}")
            elif seen:
                self.detected = b.name
        bridges = _bridges(saved, applied)
        if bridges != applied.bridges:
            found.append(f"{REFRESH}Docker's bridges are now {', '.join(bridges) or 'none'}")
        base = self._baseline[1] if self._baseline and self._baseline[0] == applied.generation else None
        wrong = problems(applied.complete, saved, base)
        if not wrong and base is None:
            self._baseline = (applied.generation, snapshot(applied.complete, saved))
        return found + wrong

    # -- scripts ---------------------------------------------------------------------
    def _program(self, rs: Ruleset, saved: Saved) -> list[str]:
        script: list[str] = []
        for table in sorted({t for t, _ in rs.chains}):
            chains = {c: rules for (t, c), rules in rs.chains.items() if t == table}
            script.append(f"*{table}")
            script += [f":{c} - [0:0]" for c in chains]
            for chain, rules in chains.items():
                script += [f"-A {chain} {r}" for r in rules]
            script += [j for j in (_jump_line(j, saved.get(table, [])) for j in JUMPS if j.table == table) if j]
            script.append("COMMIT")
        return script

    @staticmethod
    def _teardown(saved: Saved) -> list[str]:
        script: list[str] = []
        for table in sorted({t for t, _ in our_chains()}):
            lines = saved.get(table, [])
            declared = {line.split()[0][1:] for line in lines if line.startswith(":")}
            chains = sorted({c for t, c in our_chains() if t == table and c in declared})
            if not chains:
                continue
            script += [f"*{table}", *(f":{c} - [0:0]" for c in chains)]
            for jump in (j for j in JUMPS if j.table == table and j.chain in chains):
                # one delete per copy: an admin may have duplicated the jump
                script += [f"-D {jump.builtin} {jump.rule()}"] * lines.count(f"-A {jump.builtin} {jump.rule()}")
            script += [*(f"-X {c}" for c in chains), "COMMIT"]
        return script


def _bridges(saved: Saved, old: Applied | None) -> tuple[str, ...]:
    """Docker's bridges; when its rules name none (someone flushed them), the ones seen
    before: dockerd always has docker0, and isolation must not lapse with its rules."""
    return docker_bridges(saved) or (old.bridges if old is not None else ())


def _jump_line(jump: Jump, lines: list[str]) -> str:
    body = [r.split(" ", 2)[2] for r in lines if r.startswith(f"-A {jump.builtin} ")]
    if jump.rule() in body:
        return ""
    if not jump.first:
        return f"-A {jump.builtin} {jump.rule()}"
    # After DOCKER-USER (the admin's chain), otherwise first.
    pos = body.index("-j DOCKER-USER") + 2 if "-j DOCKER-USER" in body else 1
    return f"-I {jump.builtin} {pos} {jump.rule()}"
