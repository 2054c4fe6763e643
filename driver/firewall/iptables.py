"""Applies a ``Ruleset`` with iptables-restore, atomically per table and family.

Each sync rewrites our chains whole (declaring a chain in ``iptables-restore
--noflush`` empties it first), so the result is the same however many times it runs:
after a driver restart the rules for existing endpoints are present exactly once.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from driver.errors import DriverError, Unavailable
from driver.firewall.rules import JUMPS, Jump, Ruleset

log = logging.getLogger(__name__)


class Iptables:
    def __init__(self, timeout: float, v6: bool = False) -> None:
        self.timeout = timeout
        self.v6 = v6
        prefix = "ip6tables" if v6 else "iptables"
        self.cmd, self.restore = prefix, f"{prefix}-restore"
        self.available = shutil.which(self.restore) is not None
        if not self.available:
            log.warning("%s not found: no firewall rules will be programmed", self.restore)

    def _run(self, args: list[str], stdin: str | None = None, check: bool = True) -> str:
        # -w waits for the xtables lock, bounded by our own timeout below.
        try:
            proc = subprocess.run(
                args, input=stdin, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{args[0]} did not finish within {self.timeout:.0f}s") from None
        if check and proc.returncode != 0:
            raise DriverError(f"{args[0]} failed: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout

    def _list(self, table: str, chain: str) -> list[str] | None:
        args = [self.cmd, "-w", str(int(self.timeout)), "-t", table, "-S", chain]
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{self.cmd} did not finish within {self.timeout:.0f}s") from None
        return proc.stdout.splitlines() if proc.returncode == 0 else None

    def apply(self, rs: Ruleset) -> None:
        if not self.available:
            return
        if rs.is_empty():
            self._remove_all()
            return
        script: list[str] = []
        for table in sorted({t for t, _ in rs.chains}):
            script.append(f"*{table}")
            chains = {c: rules for (t, c), rules in rs.chains.items() if t == table}
            script += [f":{c} - [0:0]" for c in chains]
            for chain, rules in chains.items():
                script += [f"-A {chain} {r}" for r in rules]
            script += [self._jump_line(j) for j in JUMPS if j.table == table]
            script.append("COMMIT")
        self._run([self.restore, "-w", str(int(self.timeout)), "--noflush"], "\n".join(s for s in script if s) + "\n")

    def _jump_line(self, jump: Jump) -> str:
        rules = self._list(jump.table, jump.builtin) or []
        body = [r.split(" ", 2)[2] for r in rules if r.startswith(f"-A {jump.builtin} ")]
        if jump.rule() in body:
            return ""
        if not jump.first:
            return f"-A {jump.builtin} {jump.rule()}"
        # After DOCKER-USER (the admin's chain), otherwise first.
        pos = body.index("-j DOCKER-USER") + 2 if "-j DOCKER-USER" in body else 1
        return f"-I {jump.builtin} {pos} {jump.rule()}"

    def _remove_all(self) -> None:
        wait = ["-w", str(int(self.timeout))]
        for jump in JUMPS:
            if self._list(jump.table, jump.chain) is None:
                continue
            # Deleting one copy per call; an admin may have duplicated the jump.
            while self._has_jump(jump):
                self._run([self.cmd, *wait, "-t", jump.table, "-D", jump.builtin, *jump.rule().split()])
            self._run([self.cmd, *wait, "-t", jump.table, "-F", jump.chain], check=False)
            self._run([self.cmd, *wait, "-t", jump.table, "-X", jump.chain], check=False)

    def _has_jump(self, jump: Jump) -> bool:
        rules = self._list(jump.table, jump.builtin) or []
        return f"-A {jump.builtin} {jump.rule()}" in rules
