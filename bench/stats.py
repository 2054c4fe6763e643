"""Medians, spreads and percentiles (the standard library's, with the edge cases pinned down)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    n: int
    median: float
    min: float
    max: float
    p99: float

    def scaled(self, factor: float) -> Summary:
        return Summary(self.n, self.median * factor, self.min * factor, self.max * factor, self.p99 * factor)


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100): always a value that was measured."""
    if not xs:
        return math.nan
    s = sorted(xs)
    rank = max(1, math.ceil(q / 100 * len(s)))
    return s[min(rank, len(s)) - 1]


def summarize(xs: Sequence[float]) -> Summary:
    if not xs:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    return Summary(len(xs), statistics.median(xs), min(xs), max(xs), percentile(xs, 99))


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def paired(a: Sequence[float], b: Sequence[float]) -> Summary:
    """Per-round ratios a[i] / b[i] of two interleaved series: slow drifts of the machine cancel out."""
    return summarize([x / y for x, y in zip(a, b, strict=True) if y])
