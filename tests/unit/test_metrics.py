"""Metrics: the exposition parses back (HELP/TYPE, cumulative buckets, escaping), and the
measuring store decorator counts what the store it wraps does."""

from __future__ import annotations

import math
import re
import threading
import urllib.request

import pytest

from driver.cluster.base import StoreUnavailable
from driver.cluster.memory import MemoryClusterStore
from driver.ops.activity import Activity
from driver.ops.measured_store import MeasuredStore
from driver.ops.metrics import Registry
from driver.ops.metrics_server import MetricsServer
from driver.ops.sightings import PeerSightings
from driver.ops.telemetry import DriverMetrics

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, dict[str, str], float]]]:
    """A strict reader of the text format: families (name → type, help) and samples."""
    families: dict[str, tuple[str, str]] = {}
    helps: dict[str, str] = {}
    samples = []
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, doc = line[7:].partition(" ")
            helps[name] = _unescape(doc)
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name in helps, f"TYPE before HELP for {name}"
            assert kind in ("counter", "gauge", "histogram"), line
            families[name] = (kind, helps[name])
        else:
            m = SAMPLE.match(line)
            assert m, f"not a sample line: {line!r}"
            raw = m.group(2) or ""
            labels = {k: _unescape(v) for k, v in LABEL.findall(raw)}
            assert raw == ",".join(f'{k}="{v}"' for k, v in LABEL.findall(raw)), line
            base = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
            assert m.group(1) in families or base in families, f"sample of an undeclared family: {line}"
            samples.append((m.group(1), labels, float(m.group(3))))
    return families, samples


def test_counters_and_escaping() -> None:
    r = Registry()
    c = r.counter("x_requests_total", 'Requests "served",\\ by verb\nsecond line.', ["verb"])
    c.inc('Net.Create"x"\\y\nz')
    c.inc("b", by=2)
    families, samples = parse(r.render())
    assert families == {"x_requests_total": ("counter", 'Requests "served",\\ by verb\nsecond line.')}
    assert ("x_requests_total", {"verb": 'Net.Create"x"\\y\nz'}, 1.0) in samples
    assert ("x_requests_total", {"verb": "b"}, 2.0) in samples


def test_unlabelled_counter_starts_at_zero() -> None:
    r = Registry()
    r.counter("x_runs_total", "Runs.")
    assert parse(r.render())[1] == [("x_runs_total", {}, 0.0)]


def test_histogram_buckets_are_cumulative_and_agree_with_count() -> None:
    r = Registry()
    h = r.histogram("x_seconds", "Time.", ["verb"], buckets=(0.01, 0.1, 1.0))
    for v in (0.005, 0.05, 0.05, 0.5, 7.0):
        h.observe(v, "a")
    families, samples = parse(r.render())
    assert families["x_seconds"][0] == "histogram"
    buckets = [(s[1]["le"], s[2]) for s in samples if s[0] == "x_seconds_bucket"]
    assert buckets == [("0.01", 1), ("0.1", 3), ("1.0", 4), ("+Inf", 5)]
    assert next(s[1] for s in samples if s[0] == "x_seconds_bucket") == {"verb": "a", "le": "0.01"}
    (total,) = [s[2] for s in samples if s[0] == "x_seconds_sum"]
    (count,) = [s[2] for s in samples if s[0] == "x_seconds_count"]
    assert math.isclose(total, 7.605) and count == 5


def test_gauges_read_at_scrape_and_a_failing_one_spares_the_rest() -> None:
    r = Registry()
    values = {"n1": 2.0}
    r.gauge("x_endpoints", "Endpoints.", ["network"], lambda: [((k,), v) for k, v in values.items()])
    r.gauge("x_broken", "Broken.", [], lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    r.counter("x_after_total", "After.")
    values["n2"] = 5.0
    text = r.render()
    assert "# x_broken unavailable: division by zero" in text
    families, samples = parse("\n".join(line for line in text.splitlines() if "unavailable" not in line) + "\n")
    assert ("x_endpoints", {"network": "n2"}, 5.0) in samples and "x_after_total" in families


def test_wrong_labels_are_refused() -> None:
    c = Registry().counter("x_total", "X.", ["verb"])
    with pytest.raises(ValueError, match="takes labels"):
        c.inc()


def test_driver_families_follow_the_naming_conventions() -> None:
    m = DriverMetrics()
    activity = Activity(m)
    m.add_gauges(lambda: [(("abc",), 1)], lambda: [(("p",), 3)], lambda: [((), 0)], lambda: [((), 1.5)])
    ok = activity.started("NetworkDriver.Join")
    bad = activity.started("NetworkDriver.Join")
    activity.finished(ok, 200)
    activity.finished(bad, 400)
    families, samples = parse(m.registry.render())
    for name, (kind, _) in families.items():
        assert name.startswith("pyoverlay_")
        assert name.endswith("_total") == (kind == "counter"), name
        if kind == "histogram":
            assert name.endswith("_seconds")
    assert ("pyoverlay_requests_total", {"verb": "NetworkDriver.Join"}, 2.0) in samples
    assert ("pyoverlay_request_errors_total", {"verb": "NetworkDriver.Join", "status": "400"}, 1.0) in samples
    assert ("pyoverlay_request_duration_seconds_count", {"verb": "NetworkDriver.Join"}, 2.0) in samples
    assert {"pyoverlay_endpoints", "pyoverlay_addresses_in_use", "pyoverlay_peer_watch_lag_seconds",
            "pyoverlay_etcd_request_duration_seconds", "pyoverlay_etcd_errors_total",
            "pyoverlay_reconcile_runs_total", "pyoverlay_reconcile_failures_total"} <= set(families)  # fmt: skip


class _Down(MemoryClusterStore):
    def get(self, key: str):  # type: ignore[no-untyped-def]
        raise StoreUnavailable("etcd at x: get: no member reachable")


def test_measured_store_times_calls_counts_errors_and_tracks_health() -> None:
    m = DriverMetrics()
    sightings = PeerSightings()
    store = MeasuredStore(MemoryClusterStore(), m, on_keys=sightings.saw)
    assert store.health.answering is None
    assert store.create("peers/app/h2/ep1", b"{}")
    store.range("peers/")
    assert store.health.answering is True and sightings.age("h2") is not None and sightings.age("h3") is None
    assert m.etcd_seconds.count("create") == 1 and m.etcd_seconds.count("range") == 1
    down = MeasuredStore(_Down(), m)
    with pytest.raises(StoreUnavailable):
        down.get("x")
    assert down.health.answering is False and "no member reachable" in (down.health.last_error or "")
    assert m.etcd_errors.value("get") == 1 and m.etcd_seconds.count("get") == 1


def test_measured_watch_marks_batches() -> None:
    m = DriverMetrics()
    sightings = PeerSightings()
    store = MeasuredStore(MemoryClusterStore(), m, on_keys=sightings.saw)
    _, rev = store.range("peers/")
    watch = store.watch("peers/", rev + 1)
    store.create("peers/app/h3/ep9", b"{}")
    batch = next(iter(watch))
    watch.cancel()
    assert [e.key for e in batch.events] == ["peers/app/h3/ep9"]
    assert store.health.last_watch_batch is not None and sightings.age("h3") is not None


def test_metrics_server_serves_the_registry_over_tcp() -> None:
    r = Registry()
    r.counter("x_total", "X.").inc()
    server = MetricsServer(r.render)
    host, port = server.listen_tcp("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            assert parse(resp.read().decode())[1] == [("x_total", {}, 1.0)]
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://{host}:{port}/other", timeout=5)
    finally:
        server.stop()
    assert not [t for t in threading.enumerate() if t.name == "pyoverlay-metrics"]
