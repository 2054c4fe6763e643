"""The markdown report: a headline table (figure, value, target) and one detail table per benchmark."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.stats import Summary, paired, ratio, summarize


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|")


def fmt(x: float, digits: int = 1) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def fmt_ratio(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def fmt_paired(s: Summary) -> str:
    """`per round 0.97 (0.91..1.02)`: median, min and max of the per-round ratios."""
    return f"per round {fmt_ratio(s.median)} ({fmt_ratio(s.min)}..{fmt_ratio(s.max)})"


def fmt_vs(a: Sequence[float], b: Sequence[float]) -> str:
    """`0.98; per round 0.97 (0.91..1.02)`: two interleaved series, the ratio of their medians, then per round."""
    return f"{fmt_ratio(ratio(summarize(a).median, summarize(b).median))}; {fmt_paired(paired(a, b))}"


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([_cell(c) for c in cells])

    def render(self) -> str:
        out = [f"### {self.title}", ""]
        if self.rows:
            out.append("| " + " | ".join(self.headers) + " |")
            out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.headers))) + "|")
            out += ["| " + " | ".join(r) + " |" for r in self.rows]
            out.append("")
        out += [f"- {n}" for n in self.notes]
        return "\n".join(out).rstrip() + "\n"


@dataclass
class Headline:
    figure: str
    value: str
    target: str = "-"
    verdict: str = "-"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("meets" if ok else "**misses**")


@dataclass
class Report:
    command: str
    title: str = "pyoverlay benchmarks"
    context: list[tuple[str, str]] = field(default_factory=list)
    headlines: list[Headline] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)  # every sample, for `--json`

    def headline(self, figure: str, value: str, target: str = "-", ok: bool | None = None) -> None:
        self.headlines.append(Headline(figure, value, target, verdict(ok)))

    def render(self) -> str:
        out = [f"## {self.title}", "", "```", f"$ {self.command}", "```", ""]
        out += [f"- {k}: {v}" for k, v in self.context]
        out.append("")
        if self.headlines:
            out += ["### Summary", "", "| figure | value | target | verdict |", "|---|---:|---:|---|"]
            out += [
                f"| {_cell(h.figure)} | {_cell(h.value)} | {_cell(h.target)} | {h.verdict} |" for h in self.headlines
            ]
            out.append("")
        for t in self.tables:
            out += [t.render()]
        if self.errors:
            out += ["### Errors", ""] + [f"- {e}" for e in self.errors] + [""]
        return "\n".join(out).rstrip() + "\n"
