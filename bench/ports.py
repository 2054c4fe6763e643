"""Published-port throughput: pyoverlay's kernel DNAT vs the container's own address vs Docker's bridge.

From the outside host (192.0.2.2, beyond the engine's uplink) Docker's bridge also DNATs in
the kernel; its userland proxy (docker-proxy) only carries connections to the engine's
loopback, so that path is measured too, from the engine's own netns to 127.0.0.1.
"""

from __future__ import annotations

import logging
from typing import Any

from bench import iperf
from bench.config import Config
from bench.context import NETWORKS, Bench, cpu_seconds
from bench.report import Report, Table, fmt, fmt_ratio, fmt_vs
from bench.stats import ratio, summarize

log = logging.getLogger("bench")

PO_PORT, BR_PORT = 5201, 5202
OUT_PO = "outside → published port, pyoverlay (kernel DNAT)"
OUT_CTR = "outside → container address, pyoverlay (routed, no NAT: ceiling)"
OUT_BR = "outside → published port, bridge (kernel DNAT)"
LO_PO = "engine host → 127.0.0.1, pyoverlay (kernel DNAT)"
LO_BR = "engine host → 127.0.0.1, bridge (docker-proxy)"
TITLE = "Published-port TCP throughput (iperf3, one stream)"


def _not_available(rep: Report, reason: str) -> None:
    t = Table(TITLE, ["path", "result"])
    t.add("published port on a pyoverlay network", "not available")
    t.notes.append(reason)
    rep.tables.append(t)
    rep.headline("published port ÷ container address (pyoverlay)", "not available", "≥ 0.90")


def _subnet(network: str) -> str:
    args = NETWORKS[network]
    return args[args.index("--subnet") + 1]


def _insert(rule: list[str]) -> list[str]:
    """`[-t T] CHAIN spec...` -> `[-t T] -I CHAIN spec...`."""
    i = 2 if rule[0] == "-t" else 0
    return [*rule[:i], "-I", *rule[i:]]


def _delete(rule: list[str]) -> list[str]:
    i = 2 if rule[0] == "-t" else 0
    return [*rule[:i], "-D", *rule[i:]]


def run(b: Bench, cfg: Config, rep: Report) -> None:
    out = b.outside()
    po_net, br_net = b.network("bench-po"), b.network("bench-br")
    names: list[str] = []
    servers: list[Any] = []
    added: list[list[str]] = []
    try:
        r = b.docker("run", "-d", "--name", "pp-po", "--network", po_net, "-p", f"{PO_PORT}:5201", "bb", "sleep",
                     "86400", check=False)
        if r.returncode != 0:
            _not_available(rep, f"`docker run -p {PO_PORT}:5201` on a pyoverlay network failed: {r.stderr.strip()}")
            return
        names.append("pp-po")
        servers.append(iperf.start_server(b, b.container_netns("pp-po")))
        try:
            iperf.client(out.ns.path, out.engine_ip, PO_PORT, seconds=1)
        except iperf.IperfError as err:
            _not_available(rep, f"nothing answers on {out.engine_ip}:{PO_PORT} from the outside host: {err}")
            return
        b.run_container("pp-br", br_net, "-p", f"{BR_PORT}:5201")
        names.append("pp-br")
        servers.append(iperf.start_server(b, b.container_netns("pp-br")))

        # The ceiling: the outside host reaches the container's address directly. pyoverlay drops
        # unpublished ingress (raw: our subnet arriving off the bridge; filter: forced-in traffic and
        # its answers), so the lab adds an admin's exception for this one port, both directions,
        # ahead of pyoverlay's chains (raw PREROUTING top, DOCKER-USER).
        po_ip = b.container_ip("pp-po", po_net)
        out.ns.ip("route", "add", _subnet(po_net), "via", out.engine_ip)
        to_ctr = ["-i", out.engine_if, "-d", po_ip, "-p", "tcp", "--dport", "5201", "-j", "ACCEPT"]
        from_ctr = ["-o", out.engine_if, "-s", po_ip, "-p", "tcp", "--sport", "5201", "-j", "ACCEPT"]
        exceptions = [["-t", "raw", "PREROUTING", *to_ctr], ["DOCKER-USER", *to_ctr], ["DOCKER-USER", *from_ctr]]
        for rule in exceptions:
            b.engine_iptables(*_insert(rule))
            added.append(rule)

        outside, engine = str(out.ns.path), str(b.eng.netns.path)
        flows = [
            iperf.Flow(OUT_PO, outside, out.engine_ip, PO_PORT),
            iperf.Flow(OUT_CTR, outside, po_ip, 5201),
            iperf.Flow(OUT_BR, outside, out.engine_ip, BR_PORT),
            iperf.Flow(LO_PO, engine, "127.0.0.1", PO_PORT),
            iperf.Flow(LO_BR, engine, "127.0.0.1", BR_PORT),
        ]
        for f in flows:  # warm-up, discarded (and proof that every path works)
            iperf.measure(f, cfg.iperf_warmup_seconds)
        proxies = b.docker_proxy_pids()
        cpu0 = [cpu_seconds(p) for p in [b.drv.pid or 0, *proxies]]
        results = iperf.interleave(flows, cfg.ports_reps, cfg.iperf_seconds, "ports")
        cpu = [cpu_seconds(p) - c for p, c in zip([b.drv.pid or 0, *proxies], cpu0, strict=True)]
    finally:
        for rule in reversed(added):
            b.engine_iptables(*_delete(rule))
        for s in servers:
            b.stop_proc(s)
        b.remove_containers(names)
    _report(cfg, rep, results, driver_cpu=cpu[0], proxy_cpu=sum(cpu[1:]), n_proxies=len(proxies))


def _report(
    cfg: Config, rep: Report, results: dict[str, list[iperf.Result]], *, driver_cpu: float, proxy_cpu: float,
    n_proxies: int,
) -> None:
    gbps = {label: [r.gbps for r in rs] for label, rs in results.items()}
    rep.raw["ports"] = {"unit": "Gbit/s", "samples": gbps}
    s = {label: summarize(xs) for label, xs in gbps.items()}
    outside = (OUT_PO, OUT_CTR, OUT_BR)
    t = Table(TITLE, ["path", "median Gbit/s", "min", "max", "n", "÷ container address", "÷ docker-proxy"])
    for label, x in s.items():
        to_ctr = fmt_ratio(ratio(x.median, s[OUT_CTR].median)) if label in outside else "-"
        to_proxy = "-" if label in outside else fmt_ratio(ratio(x.median, s[LO_BR].median))
        t.add(label, fmt(x.median, 2), fmt(x.min, 2), fmt(x.max, 2), x.n, to_ctr, to_proxy)
    t.notes += [
        f"`docker run -p {PO_PORT}:5201` on a pyoverlay network and `-p {BR_PORT}:5201` on a `-d bridge` network; "
        f"host iperf3 server in each container's netns; `iperf3 -c -t {cfg.iperf_seconds} -J` from the outside "
        f"netns (or from dockerd's netns for 127.0.0.1); one warm-up per path, {cfg.ports_reps} rounds rotated.",
        "Docker's bridge DNATs traffic from outside in the kernel as pyoverlay does; its userland proxy is on the "
        "path only for connections to the engine's loopback (`OUTPUT ! -d 127.0.0.0/8` in its nat rules).",
        f"CPU time during the measured runs: pyoverlay driver {driver_cpu:.2f}s, docker-proxy ({n_proxies} "
        f"processes) {proxy_cpu:.2f}s.",
    ]
    rep.tables.append(t)
    r = ratio(s[OUT_PO].median, s[OUT_CTR].median)
    rep.headline("published port ÷ container address (pyoverlay, from outside)", fmt_vs(gbps[OUT_PO], gbps[OUT_CTR]),
                 "≥ 0.90", r >= 0.90)
    rep.headline("published port from outside: pyoverlay ÷ bridge", fmt_vs(gbps[OUT_PO], gbps[OUT_BR]))
    rep.headline("published port via 127.0.0.1: pyoverlay ÷ bridge's docker-proxy", fmt_vs(gbps[LO_PO], gbps[LO_BR]))
