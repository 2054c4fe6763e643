"""Applies a ``Ruleset`` with iptables-restore: one transaction per family.

Each apply rewrites our chains whole (declaring a chain in ``iptables-restore
--noflush`` empties it first) and adds whichever of our jumps is missing, so the result
is the same however many times it runs: after a driver restart the rules for existing
endpoints are present exactly once. Removing everything is one transaction too.

One ``iptables-save`` (to see which jumps exist) and one ``iptables-restore`` per
change, and none when the wanted rules equal what this process last applied: a
``docker run`` without ports changes no rule and costs no process.
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
        prefix = "ip6tables" if v6 else "iptables"
        self.save_cmd, self.restore_cmd = f"{prefix}-save", f"{prefix}-restore"
        self.available = shutil.which(self.restore_cmd) is not None
        if not self.available:
            log.warning("%s not found: no firewall rules will be programmed", self.restore_cmd)
        self._last: Ruleset | None = None

    def _run(self, args: list[str], stdin: str | None = None) -> str:
        try:
            proc = subprocess.run(
                args, input=stdin, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{args[0]} did not finish within {self.timeout:.0f}s") from None
        if proc.returncode != 0:
            raise DriverError(f"{args[0]} failed: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout

    def _saved(self) -> dict[str, list[str]]:
        """Current rules and chain declarations, per table."""
        tables: dict[str, list[str]] = {}
        current: list[str] = []
        for line in self._run([self.save_cmd]).splitlines():
            if line.startswith("*"):
                current = tables.setdefault(line[1:], [])
            elif line.startswith(("-A ", ":")):
                current.append(line)
        return tables

    def apply(self, rs: Ruleset) -> None:
        if not self.available or rs == self._last:
            return
        saved = self._saved()
        script = self._teardown(saved) if rs.is_empty() else self._program(rs, saved)
        if script:
            # -w: wait for the xtables lock; our own timeout bounds the wait.
            self._run([self.restore_cmd, "-w", str(int(self.timeout)), "--noflush"], "\n".join(script) + "\n")
        self._last = rs

    def _program(self, rs: Ruleset, saved: dict[str, list[str]]) -> list[str]:
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
    def _teardown(saved: dict[str, list[str]]) -> list[str]:
        script: list[str] = []
        for table in sorted({j.table for j in JUMPS}):
            lines = saved.get(table, [])
            declared = {line.split()[0][1:] for line in lines if line.startswith(":")}
            ours = [j for j in JUMPS if j.table == table and j.chain in declared]
            if not ours:
                continue
            chains = sorted({j.chain for j in ours})
            script += [f"*{table}", *(f":{c} - [0:0]" for c in chains)]
            for jump in ours:
                # one delete per copy: an admin may have duplicated the jump
                script += [f"-D {jump.builtin} {jump.rule()}"] * lines.count(f"-A {jump.builtin} {jump.rule()}")
            script += [*(f"-X {c}" for c in chains), "COMMIT"]
        return script


def _jump_line(jump: Jump, lines: list[str]) -> str:
    body = [r.split(" ", 2)[2] for r in lines if r.startswith(f"-A {jump.builtin} ")]
    if jump.rule() in body:
        return ""
    if not jump.first:
        return f"-A {jump.builtin} {jump.rule()}"
    # After DOCKER-USER (the admin's chain), otherwise first.
    pos = body.index("-j DOCKER-USER") + 2 if "-j DOCKER-USER" in body else 1
    return f"-I {jump.builtin} {pos} {jump.rule()}"
