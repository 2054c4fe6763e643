"""`docker run --rm --network NET bb true`: pyoverlay vs Docker's bridge vs `--network none` (the floor)."""

from __future__ import annotations

import logging
import time

from bench.config import Config
from bench.context import Bench
from bench.report import Report, Table, fmt, fmt_ratio, fmt_vs
from bench.stats import ratio, summarize

log = logging.getLogger("bench")

# (label, docker network); the first is the subject, "bridge" the baseline, "none" the floor.
VARIANTS = (
    ("pyoverlay", "bench-po"),
    ("pyoverlay + pyoverlay IPAM", "bench-poipam"),
    ("bridge (built-in)", "bench-br"),
    ("none (floor)", "none"),
)


def run(b: Bench, cfg: Config, rep: Report) -> None:
    nets = {label: (b.network(net) if net != "none" else net) for label, net in VARIANTS}
    labels = [label for label, _ in VARIANTS]

    def once(label: str) -> float:
        t0 = time.perf_counter()
        b.docker("run", "--rm", "--network", nets[label], "bb", "true")
        return time.perf_counter() - t0

    for _ in range(cfg.latency_warmup):
        for label in labels:
            once(label)
    samples: dict[str, list[float]] = {label: [] for label in labels}
    for i in range(cfg.latency_reps):
        # Rotate the order each round: every variant runs in every position equally often.
        for label in labels[i % len(labels):] + labels[: i % len(labels)]:
            samples[label].append(once(label))
        log.info("run-latency: round %d/%d", i + 1, cfg.latency_reps)

    rep.raw["run-latency"] = {"unit": "s", "samples": samples}
    s = {label: summarize(xs).scaled(1000) for label, xs in samples.items()}
    po, po_ipam, br, none = (s[label] for label in labels)
    t = Table(
        "docker run --rm latency",
        ["network", "median ms", "min ms", "max ms", "n", "÷ bridge", "above floor ms"],
    )
    for label in labels:
        x = s[label]
        t.add(label, fmt(x.median), fmt(x.min), fmt(x.max), x.n, fmt_ratio(ratio(x.median, br.median)),
              fmt(x.median - none.median))
    cost = ratio(po.median - none.median, br.median - none.median)
    t.notes += [
        f"`docker run --rm --network NET bb true` through the docker CLI, wall time; {cfg.latency_warmup} warm-up "
        f"run(s) per variant discarded, then {cfg.latency_reps} rounds A B C D with the order rotated each round.",
        "bridge = a user-defined `docker network create -d bridge` network (embedded DNS like pyoverlay's); "
        "pyoverlay uses Docker's default IPAM unless noted.",
        f"network cost above the floor, pyoverlay ÷ bridge: {fmt_ratio(cost)} "
        f"(with pyoverlay IPAM: {fmt_ratio(ratio(po_ipam.median - none.median, br.median - none.median))}).",
    ]
    rep.tables.append(t)
    r = ratio(po.median, br.median)
    rep.headline("docker run --rm: pyoverlay ÷ bridge (median)", fmt_vs(samples[labels[0]], samples[labels[2]]),
                 "≤ 1.10", r <= 1.10)
    rep.headline(
        "docker run --rm: median ms pyoverlay / bridge / none",
        f"{fmt(po.median, 0)} / {fmt(br.median, 0)} / {fmt(none.median, 0)}",
    )
