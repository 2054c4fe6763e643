"""Macvlan TCP throughput: pyoverlay's macvlan mode vs the same plumbing built by hand (the ceiling).

Two paths, each side by side with its hand-built twin: container ↔ container on one parent
(macvlan bridge mode: the frames never leave the parent), and container → the LAN host (out
of the parent, through the LAN's bridge). The hand-built twin has a parent of its own of the
same kind (a veth into the same LAN bridge, MTU 1500) in a plain namespace, two macvlan devices
(mode bridge) on it moved into two more namespaces.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench import iperf
from bench.config import Config
from bench.context import LAN_PARENT, MACVLAN_NET, Bench, link_mtu
from bench.report import Report, Table, fmt, fmt_ratio, fmt_vs
from bench.stats import ratio, summarize

C2C_PO = "container ↔ container, pyoverlay macvlan"
C2C_HAND = "container ↔ container, hand-built macvlan (ceiling)"
LAN_PO = "container → LAN host, pyoverlay macvlan"
LAN_HAND = "namespace → LAN host, hand-built macvlan (ceiling)"
CEILING = {C2C_PO: C2C_HAND, C2C_HAND: C2C_HAND, LAN_PO: LAN_HAND, LAN_HAND: LAN_HAND}
TARGET = 0.95


def run(b: Bench, cfg: Config, rep: Report) -> None:
    lan = b.lan()
    names: list[str] = []
    servers: list[Any] = []
    try:
        s_ns, c_ns, s_ip = b.container_pair("mv-po", b.network(MACVLAN_NET))
        names += ["mv-po-s", "mv-po-c"]
        hb = b.handbuilt_macvlan()
        servers += [iperf.start_server(b, s_ns), iperf.start_server(b, hb.a.path),
                    iperf.start_server(b, lan.host_ns.path)]
        flows = [
            iperf.Flow(C2C_PO, c_ns, s_ip),
            iperf.Flow(C2C_HAND, str(hb.b.path), hb.a_ip),
            iperf.Flow(LAN_PO, c_ns, lan.host_ip),
            iperf.Flow(LAN_HAND, str(hb.b.path), lan.host_ip),
        ]
        mtus = {link_mtu(ns) for ns in (s_ns, c_ns, hb.a.path, hb.b.path)}
        parent_mtus = {link_mtu(ns.path, LAN_PARENT) for ns in (b.eng.netns, hb.host)}

        results, driver_cpu = iperf.warm_and_interleave(
            b, flows, "macvlan", reps=cfg.macvlan_reps, seconds=cfg.iperf_seconds, warmup=cfg.iperf_warmup_seconds
        )
    finally:
        for s in servers:
            b.stop_proc(s)
        b.remove_containers(names)

    gbps = {label: [r.gbps for r in rs] for label, rs in results.items()}
    rep.raw["macvlan"] = {"unit": "Gbit/s", "samples": gbps}
    s = {label: summarize(xs) for label, xs in gbps.items()}
    t = Table(
        "Macvlan TCP throughput (iperf3, one stream)",
        ["path", "median Gbit/s", "min", "max", "n", "÷ hand-built", "retransmits (median)"],
    )
    for label, x in s.items():
        retr = statistics.median([r.retransmits for r in results[label]])
        t.add(label, fmt(x.median, 2), fmt(x.min, 2), fmt(x.max, 2), x.n,
              fmt_ratio(ratio(x.median, s[CEILING[label]].median)), fmt(retr, 0))
    t.notes += [
        f"`docker network create -d pyoverlay -o mode=macvlan -o parent={LAN_PARENT} -o macvlan_mode=bridge` on "
        f"the lab's LAN ({lan.subnet}: router {lan.router_ip}, LAN host {lan.host_ip} behind a bridge in its own "
        f"namespace; `{LAN_PARENT}` is a veth port of that bridge); two `bb sleep` containers on it.",
        f"hand-built: a plain namespace with its own `{LAN_PARENT}` (another veth port of the same bridge), two "
        f"`ip link add link {LAN_PARENT} type macvlan mode bridge` devices moved into two plain namespaces as eth0, "
        f"{hb.a_ip} and {hb.b_ip}; MTU {'/'.join(map(str, sorted(mtus)))} on every eth0, "
        f"{'/'.join(map(str, sorted(parent_mtus)))} on both parents.",
        f"host iperf3 in each namespace (`nsenter --net=`), `iperf3 -c -t {cfg.iperf_seconds} -J`, receiver rate; "
        f"the client sends; one {cfg.iperf_warmup_seconds}s warm-up per path discarded, {cfg.macvlan_reps} rounds "
        "of the four paths with the order rotated.",
        "unlike the hand-built namespaces, each container's netns has Docker's embedded-DNS nat rules (on any "
        "user-defined network, whatever the driver), so conntrack sees every packet there: an upper bound again.",
        f"driver CPU time during the measured runs: {driver_cpu:.2f}s (the data path never touches Python).",
    ]
    rep.tables.append(t)
    for what, po, hand in (("container ↔ container", C2C_PO, C2C_HAND), ("container → LAN host", LAN_PO, LAN_HAND)):
        r = ratio(s[po].median, s[hand].median)
        rep.headline(f"macvlan {what}: pyoverlay ÷ hand-built (median)", fmt_vs(gbps[po], gbps[hand]),
                     f"≥ {TARGET:.2f}", r >= TARGET)
