"""The driver's metric families, in one registry: what is counted, under which names.

Built always (counting costs a dict update) and served only with ``--metrics-socket`` or
``--metrics-addr``. Gauges read in-memory state at scrape time, never the worker or etcd.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from driver.ops.metrics import Counter, Histogram, LabelValues, Registry

Read = Callable[[], Iterable[tuple[LabelValues, float]]]


class DriverMetrics:
    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests: Counter = r.counter("pyoverlay_requests_total", "Requests served, by verb.", ["verb"])
        self.request_seconds: Histogram = r.histogram(
            "pyoverlay_request_duration_seconds", "Time from a request's arrival to its answer, by verb.", ["verb"]
        )
        self.request_errors: Counter = r.counter(
            "pyoverlay_request_errors_total", "Requests answered with an error, by verb and HTTP status.",
            ["verb", "status"],
        )  # fmt: skip
        self.reconcile_runs: Counter = r.counter(
            "pyoverlay_reconcile_runs_total", "Reconciliations of the kernel with the records (one at each start)."
        )
        self.reconcile_failures: Counter = r.counter(
            "pyoverlay_reconcile_failures_total", "Objects a reconciliation could not bring back in line."
        )
        self.etcd_seconds: Histogram = r.histogram(
            "pyoverlay_etcd_request_duration_seconds", "Duration of cluster store calls, by operation.", ["op"]
        )
        self.etcd_errors: Counter = r.counter(
            "pyoverlay_etcd_errors_total", "Cluster store calls that failed, by operation.", ["op"]
        )

    def add_gauges(self, endpoints: Read, addresses: Read, in_flight: Read, watch_age: Read | None) -> None:
        r = self.registry
        r.gauge("pyoverlay_endpoints", "Endpoints on each network (short network ID).", ["network"], endpoints)
        r.gauge("pyoverlay_addresses_in_use", "Addresses held in each IPAM pool.", ["pool"], addresses)
        r.gauge("pyoverlay_requests_in_flight", "Requests being served now.", [], in_flight)
        if watch_age is not None:
            # etcd events carry no commit time, so the lag itself cannot be measured: the
            # age of the newest batch (events or a progress notification, asked for every
            # 5 s on a quiet watch) bounds how stale this host's peer view can be.
            r.gauge(
                "pyoverlay_peer_watch_lag_seconds",
                "Seconds since the peer watch last delivered a batch or progress notification.",
                [], watch_age,
            )  # fmt: skip
