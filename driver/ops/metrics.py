"""Prometheus metrics, self-written: counters, histograms, gauges read at scrape time.

No client library: the driver needs three kinds of metric and the text exposition
format (version 0.0.4), about a hundred lines; ``prometheus_client`` would add a
dependency (and its process-wide default registry) to a process that must start fast.

Thread-safe: requests (event loop), the worker and the cluster threads all count. A
scrape renders under each metric's lock, so a histogram's buckets, sum and count always
agree with one another.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence

LabelValues = tuple[str, ...]
# Seconds: a netlink call is ~1 ms, an endpoint ~20 ms, an etcd write a few ms, a bounded
# wait gives up at 3-30 s.
DEFAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def _labels(names: Sequence[str], values: Sequence[str], extra: tuple[str, str] | None = None) -> str:
    pairs = [*zip(names, values, strict=True), *([extra] if extra else [])]
    if not pairs:
        return ""
    return "{" + ",".join(f'{n}="{escape_label(v)}"' for n, v in pairs) + "}"


class Metric:
    kind = "untyped"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labels)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]

    def samples(self) -> list[str]:
        raise NotImplementedError

    def _key(self, values: Sequence[str]) -> LabelValues:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(values)}")
        return tuple(str(v) for v in values)


class Counter(Metric):
    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[LabelValues, float] = {} if labels else {(): 0.0}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + by

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_labels(self.labelnames, k)} {format_value(v)}" for k, v in items]


class Histogram(Metric):
    kind = "histogram"

    def __init__(
        self, name: str, help: str, labels: Sequence[str] = (), buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        super().__init__(name, help, labels)
        self.buckets = tuple(sorted(buckets))
        # Per label set: a count per bucket (not cumulative; summed at render), sum, count.
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * (len(self.buckets) + 1), [0.0]))
            i = next((i for i, b in enumerate(self.buckets) if value <= b), len(self.buckets))
            counts[i] += 1
            total[0] += value

    def count(self, *labels: str) -> int:
        with self._lock:
            series = self._series.get(self._key(labels))
            return sum(series[0]) if series else 0

    def samples(self) -> list[str]:
        out = []
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._series.items())
        for key, (counts, total) in items:
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                # Bounds as floats ("1.0", not "1"), as other exporters spell them, so
                # the series of one bucket match across exporters.
                le = ("le", "+Inf" if math.isinf(bound) else repr(float(bound)))
                out.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}")
            out.append(f"{self.name}_sum{_labels(self.labelnames, key)} {format_value(total)}")
            out.append(f"{self.name}_count{_labels(self.labelnames, key)} {running}")
        return out


class Gauge(Metric):
    """A value read when scraped: ``read`` returns (label values, value) pairs."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str],
        read: Callable[[], Iterable[tuple[LabelValues, float]]],
    ) -> None:
        super().__init__(name, help, labels)
        self.read = read

    def samples(self) -> list[str]:
        return [f"{self.name}{_labels(self.labelnames, self._key(k))} {format_value(v)}" for k, v in self.read()]


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def add(self, metric: Metric) -> Metric:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} registered twice")
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        m = Counter(name, help, labels)
        self.add(m)
        return m

    def histogram(self, name: str, help: str, labels: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:  # fmt: skip
        m = Histogram(name, help, labels, buckets)
        self.add(m)
        return m

    def gauge(self, name: str, help: str, labels: Sequence[str],
              read: Callable[[], Iterable[tuple[LabelValues, float]]]) -> Gauge:  # fmt: skip
        m = Gauge(name, help, labels, read)
        self.add(m)
        return m

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            try:
                samples = metric.samples()
            except Exception as err:
                # A gauge whose source fails must not take the other metrics with it.
                lines.append(f"# {metric.name} unavailable: {escape_help(str(err))}")
                continue
            lines += metric.header() + samples
        return "\n".join(lines) + "\n"
