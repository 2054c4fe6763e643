"""Container-to-container TCP throughput: pyoverlay vs Docker's bridge vs hand-built veth+bridge (the ceiling)."""

from __future__ import annotations

import statistics
from typing import Any

from bench import iperf
from bench.config import Config
from bench.context import Bench
from bench.report import Report, Table, fmt, fmt_ratio, fmt_vs
from bench.stats import ratio, summarize

PO, BR, HAND = "pyoverlay", "bridge (built-in)", "hand-built veth+bridge (ceiling)"


def run(b: Bench, cfg: Config, rep: Report) -> None:
    names: list[str] = []
    servers: list[Any] = []
    try:
        flows = []
        for label, prefix, net in ((PO, "tp-po", "bench-po"), (BR, "tp-br", "bench-br")):
            s_ns, c_ns, s_ip = b.container_pair(prefix, b.network(net))
            names += [f"{prefix}-s", f"{prefix}-c"]
            servers.append(iperf.start_server(b, s_ns))
            flows.append(iperf.Flow(label, c_ns, s_ip))
        hb = b.handbuilt()
        servers.append(iperf.start_server(b, hb.a.path))
        flows.append(iperf.Flow(HAND, str(hb.b.path), hb.a_ip))

        results, driver_cpu = iperf.warm_and_interleave(
            b, flows, "throughput", reps=cfg.throughput_reps, seconds=cfg.iperf_seconds, warmup=cfg.iperf_warmup_seconds
        )
    finally:
        for s in servers:
            b.stop_proc(s)
        b.remove_containers(names)

    gbps = {label: [r.gbps for r in rs] for label, rs in results.items()}
    rep.raw["throughput"] = {"unit": "Gbit/s", "samples": gbps}
    s = {label: summarize(xs) for label, xs in gbps.items()}
    t = Table(
        "Container-to-container TCP throughput (iperf3, one stream)",
        ["path", "median Gbit/s", "min", "max", "n", "÷ bridge", "÷ hand-built", "retransmits (median)"],
    )
    for label, x in s.items():
        retr = statistics.median([r.retransmits for r in results[label]])
        t.add(label, fmt(x.median, 2), fmt(x.min, 2), fmt(x.max, 2), x.n, fmt_ratio(ratio(x.median, s[BR].median)),
              fmt_ratio(ratio(x.median, s[HAND].median)), fmt(retr, 0))
    t.notes += [
        f"host iperf3 in each container's netns (`nsenter --net=/proc/PID/ns/net`), `iperf3 -c -t {cfg.iperf_seconds} "
        f"-J`, receiver rate; one {cfg.iperf_warmup_seconds}s warm-up per path discarded, {cfg.throughput_reps} "
        "rounds with the order rotated.",
        "pyoverlay and bridge containers sit in dockerd's netns (FORWARD policy DROP, br_netfilter on, conntrack); "
        "the hand-built bridge lives in plain namespaces with no firewall at all, so it is an upper bound.",
        f"driver CPU time during the measured runs: {driver_cpu:.2f}s (the data path never touches Python).",
    ]
    rep.tables.append(t)
    r = ratio(s[PO].median, s[BR].median)
    rep.headline("throughput: pyoverlay ÷ bridge (median)", fmt_vs(gbps[PO], gbps[BR]), "≥ 0.95", r >= 0.95)
    rep.headline("throughput: pyoverlay ÷ hand-built (median)", fmt_vs(gbps[PO], gbps[HAND]))
