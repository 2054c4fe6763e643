"""`scripts/bench overlay`: pyoverlay's multi-host VXLAN overlay, measured side by side in one lab run.

Its own lab (tests/lab/multihost.py): an underlay with MTU 1400, a 3-member etcd cluster, hosts A (h1) and
B (h2) running pyoverlay with `--store etcd`, and a third host C (h3) whose driver is bridge-only (the RSS
baseline). Five parts, in this order (`--parts` picks some):

* throughput: container A → container B over pyoverlay, over the same VXLAN built by hand
  (`build_hand_vxlan`) and over Docker's own overlay on a two-node swarm of A and B; interleaved; the
  fragmentation counters of every namespace on the path are read around each run.
* etcd: etcd requests per `docker run -d` (and per `docker rm -f`) on A, from the members' gRPC metrics,
  minus the background (keepalives, periodic syncs) of an idle interval of the same length.
* convergence: `docker run -d` on A → its MAC in B's FDB (and its address in B's neighbour table), and
  `docker rm -f` → gone, with 1, 10, 100 endpoints already on the network.
* rss: B's driver VmRSS after a restart with 0 and with 100 remote endpoints, and C's bridge-only driver.
* resync: 1,000 remote endpoints (fake hosts, written into etcd directly) after a kill -9 of B's driver.

Hosts A and B run the same engine (20.10 by default): in this lab a swarm task attachment times out on
dockerd 28.5 (`attaching to network failed ... context deadline exceeded`, whichever node is the manager),
so the swarm baseline needs two 20.10 engines, and all three variants then share them.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from bench import iperf
from bench.config import Config
from bench.context import DRIVER_ENV, REPO, Procs, link_mtu, proc_status, revision
from bench.netlink_poller import Poller
from bench.report import Report, Table, fmt, fmt_ratio, fmt_vs
from bench.stats import percentile, ratio, summarize
from tests.lab import LabSession, MultiHost, Netns, build_hand_vxlan, overlay_driver_args
from tests.lab.multihost import UNDERLAY_MTU, HandVxlan, HostNode

log = logging.getLogger("bench")

PARTS = ("throughput", "etcd", "convergence", "rss", "resync")
OVERLAY = "bench"  # the overlay's cluster-wide name
NET = "bov"  # its docker network name on A and B
SUBNET = "10.70.0.0/16"
SWARM_NET, SWARM_SUBNET = "bsw", "10.71.0.0/24"
BRIDGE_NET, BRIDGE_SUBNET = "bbr", "10.72.0.0/24"  # on C, for the bridge-only driver
MTU = UNDERLAY_MTU - 50  # every variant's container MTU
PREFIX = "/pyoverlay/"  # the driver's etcd key prefix
FAKE = "fake"  # fake host ids start with it: one `del --prefix` removes every fake endpoint
TXN_OPS = 120  # etcd's default --max-txn-ops is 128
PARALLEL = 4  # concurrent `docker run -d` for background endpoints
TTL = 5
BIG_DUTY = 0.1  # the poller's CPU share while it watches 1,000s of rows (2 cores, the driver needs them)
WARM_HOLD = 5.0  # seconds a plain restart is watched for rows going missing
PO, HAND, SWARM = "pyoverlay overlay", "hand-built bridge+vxlan (ceiling)", "Docker overlay (swarm)"
FRAG_FIELDS = ("FragCreates", "FragOKs", "FragFails", "ReasmReqds")


# ------------------------------------------------------------------ the lab
@dataclass
class OverlayLab:
    mh: MultiHost
    procs: Procs
    a: HostNode
    b: HostNode
    c: HostNode
    dev_a: str = ""
    dev_b: str = ""
    poller: Poller | None = None
    scratch: Netns | None = None  # for the iproute2 floor of the resync

    @property
    def poll(self) -> Poller:
        if self.poller is None:
            self.poller = Poller(self.procs, str(self.b.netns.path))
        return self.poller

    def etcdctl(self, *args: str, text: str | None = None) -> str:
        r = self.a.netns.run("etcdctl", f"--endpoints={self.mh.etcd_endpoints}", *args, input=text, timeout=60)
        return r.stdout


def _driver_args(h: HostNode) -> list[str]:
    info = ["--log-level", "info"]  # production's level (the lab's default is debug)
    if h.name == "h3":
        return info  # bridge-only: no cluster store
    return overlay_driver_args(h, host_ttl=TTL, extra=info)


@contextlib.contextmanager
def _lab(kinds: tuple[str, ...], rev: list[str], driver_rev: str | None) -> Iterator[tuple[OverlayLab, list[str]]]:
    """The multi-host lab with a copy of driver/ taken now; yields (lab, teardown errors filled on exit)."""
    session = LabSession()
    mh = MultiHost(session, kinds=(*kinds, kinds[0]), driver_args=_driver_args)
    errors: list[str] = []
    procs = Procs()
    old = os.environ.get(DRIVER_ENV)
    try:
        if old:
            rev.append(f"command {old!r}")
        else:
            src = mh.lab.dir / "src"
            if driver_rev:
                # A committed revision, whatever the work tree holds (others edit it while this runs).
                commit = _git_out("rev-parse", "--short", f"{driver_rev}^{{commit}}").strip()
                src.mkdir(parents=True)
                archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "driver"], capture_output=True,
                                         check=True, timeout=60).stdout  # fmt: skip
                subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True, timeout=60)
                rev.append(f"{commit} (`git archive` of the commit, not the work tree)")
            else:
                rev.append(f"{revision()} (a copy taken at start)")
                shutil.copytree(REPO / "driver", src / "driver", ignore=shutil.ignore_patterns("__pycache__"))
            boot = f"import sys; sys.path.insert(0, {str(src)!r}); from driver.cli import main; sys.exit(main())"
            os.environ[DRIVER_ENV] = shlex.join([sys.executable, "-c", boot])
        try:
            mh.start()
        finally:
            if old is None:
                os.environ.pop(DRIVER_ENV, None)
        ol = OverlayLab(mh, procs, mh[0], mh[1], mh[2])
        yield ol, errors
    finally:
        procs.stop_procs()
        errors += mh.teardown()
        errors += session.teardown()
        left = {**mh.leftovers(), **session.leftovers()}
        errors += [f"left behind: {k} {v}" for k, v in left.items() if v]
        for e in errors:
            log.error("teardown: %s", e)


def _git_out(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout  # fmt: skip


def _create_overlay(ol: OverlayLab) -> None:
    for h in (ol.a, ol.b):
        h.cli("network", "create", "-d", "pyoverlay", "--ipam-driver", "pyoverlay", "-o", "mode=overlay",
              "-o", f"overlay={OVERLAY}", "--subnet", SUBNET, NET)  # fmt: skip
    ol.dev_a = f"pov{_net_id(ol.a, NET)[:12]}"
    ol.dev_b = f"pov{_net_id(ol.b, NET)[:12]}"
    ol.c.cli("network", "create", "-d", "pyoverlay", "--subnet", BRIDGE_SUBNET, BRIDGE_NET)


def _net_id(h: HostNode, net: str) -> str:
    return h.cli("network", "inspect", "-f", "{{.Id}}", net).stdout.strip()


def _wait(what: str, cond: Callable[[], bool], timeout: float = 30.0, step: float = 0.05) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what}: not within {timeout:.0f}s")
        time.sleep(step)
    return time.monotonic() - t0


def _rm(h: HostNode, names: list[str], timeout: float = 300) -> None:
    if names:
        h.cli("rm", "-f", *names, check=False, timeout=timeout)


# ------------------------------------------------------------------ fake remote endpoints
@dataclass(frozen=True)
class FakeSet:
    """`n` endpoints of 10 fake hosts (VTEPs 10.99.0.51-60, nothing there) as another host would publish them."""

    ident: int
    records: dict[str, str]  # etcd key (with prefix) → PeerRecord JSON
    fdb: dict[str, str | None]  # MAC → VTEP
    neigh: dict[str, str]  # IP → MAC


def fake_set(ident: int, n: int) -> FakeSet:
    if n > 10_000:
        raise ValueError("at most 10,000 fake endpoints")
    records, fdb, neigh = {}, {}, {}
    for i in range(n):
        h = i % 10
        host, vtep = f"{FAKE}{ident:03d}x{h}", f"10.99.0.{51 + h}"
        mac = f"02:fe:{ident & 0xFF:02x}:{h:02x}:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}"
        ip = f"10.70.{100 + (ident % 2) * 40 + i // 250}.{i % 250 + 1}"  # consecutive sets never share an IP
        endpoint = f"{ident:08x}{i:056x}"
        rec = {"host": host, "vtep": vtep, "mac": mac, "ip": ip, "ip6": None}
        records[f"{PREFIX}peers/{OVERLAY}/{host}/{endpoint}"] = json.dumps(rec, separators=(",", ":"))
        fdb[mac], neigh[ip] = vtep, mac
    return FakeSet(ident, records, fdb, neigh)


def put_fakes(ol: OverlayLab, fs: FakeSet) -> None:
    items = list(fs.records.items())
    for i in range(0, len(items), TXN_OPS):
        ops = [f"put {k} {json.dumps(v)}" for k, v in items[i : i + TXN_OPS]]
        out = ol.etcdctl("txn", text="\n" + "\n".join(ops) + "\n\n\n")
        if not out.startswith("SUCCESS"):
            raise RuntimeError(f"etcdctl txn: {out[:200]}")


def delete_fakes(ol: OverlayLab) -> None:
    ol.etcdctl("del", "--prefix", f"{PREFIX}peers/{OVERLAY}/{FAKE}")


# ------------------------------------------------------------------ 1. throughput
def _out(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


def _snmp(ns_path: str) -> dict[str, int]:
    text = _out(["nsenter", f"--net={ns_path}", "cat", "/proc/net/snmp"])
    names, values = [line.split() for line in text.splitlines() if line.startswith("Ip:")][:2]
    return {k: int(values[names.index(k)]) for k in FRAG_FIELDS}


def _swarm_up(ol: OverlayLab) -> tuple[str, str, str]:
    """Swarm of A (manager) and B; attachable overlay; server on B, client on A: (client ns, server ns, server ip)."""
    a, b = ol.a, ol.b
    a.cli("swarm", "init", "--advertise-addr", a.ip)
    token = a.cli("swarm", "join-token", "-q", "worker").stdout.strip()
    b.cli("swarm", "join", "--token", token, "--advertise-addr", b.ip, f"{a.ip}:2377")
    # Docker's overlay takes this option as the underlay MTU and gives containers 50 less (20.10).
    a.cli("network", "create", "-d", "overlay", "--attachable", "--subnet", SWARM_SUBNET,
          "-o", f"com.docker.network.driver.mtu={UNDERLAY_MTU}", SWARM_NET)  # fmt: skip
    a.run_container("tp-sw-c", "--network", SWARM_NET, cmd=("sleep", "86400"))
    b.run_container("tp-sw-s", "--network", SWARM_NET, cmd=("sleep", "86400"))
    s_ip = b.container_ip("tp-sw-s", SWARM_NET)
    _wait("swarm overlay A → B", lambda: a.ping("tp-sw-c", s_ip), timeout=30, step=0.2)
    return a.engine.container_netns("tp-sw-c"), b.engine.container_netns("tp-sw-s"), s_ip


def throughput(ol: OverlayLab, cfg: Config, rep: Report) -> None:
    a, b = ol.a, ol.b
    servers: list[Any] = []
    hv: HandVxlan | None = None
    swarm = False
    names_a, names_b = ["tp-po-c"], ["tp-po-s"]
    frags: dict[str, dict[str, int]] = {}
    paths: dict[str, tuple[str, str]] = {}  # label → (client ns, server ns)
    try:
        b.run_container("tp-po-s", "--network", NET, cmd=("sleep", "86400"))
        a.run_container("tp-po-c", "--network", NET, cmd=("sleep", "86400"))
        s_mac = b.container_mac("tp-po-s", NET)
        _wait("pyoverlay: B's container in A's FDB", lambda: s_mac in a.fdb(ol.dev_a))
        paths[PO] = (a.engine.container_netns("tp-po-c"), b.engine.container_netns("tp-po-s"))
        flows = [iperf.Flow(PO, paths[PO][0], b.container_ip("tp-po-s", NET))]

        hv = build_hand_vxlan(ol.mh.lab, [(a.netns, a.ip), (b.netns, b.ip)], mtu=MTU, tag="bhv")
        paths[HAND] = (str(hv.ends[0].container.path), str(hv.ends[1].container.path))
        flows.append(iperf.Flow(HAND, paths[HAND][0], hv.ends[1].ip))

        swarm = True
        names_a.append("tp-sw-c")
        names_b.append("tp-sw-s")
        c_ns, s_ns, s_ip = _swarm_up(ol)
        paths[SWARM] = (c_ns, s_ns)
        flows.append(iperf.Flow(SWARM, c_ns, s_ip))

        mtus = {label: (link_mtu(c), link_mtu(s)) for label, (c, s) in paths.items()}
        wrong = {k: v for k, v in mtus.items() if v != (MTU, MTU)}
        if wrong:
            raise RuntimeError(f"container MTUs differ from {MTU}: {wrong}")
        for _, s in paths.values():
            servers.append(iperf.start_server(ol.procs, s))
        for f in flows:  # warm-up, discarded (also proves each path)
            iperf.measure(f, cfg.iperf_warmup_seconds)

        spots = {label: [c, s, str(a.netns.path), str(b.netns.path)] for label, (c, s) in paths.items()}
        frags = {label: dict.fromkeys(FRAG_FIELDS, 0) for label in paths}

        def counted(f: iperf.Flow, seconds: int) -> iperf.Result:
            before = [_snmp(p) for p in spots[f.label]]
            res = iperf.measure(f, seconds)
            for b0, p in zip(before, spots[f.label], strict=True):
                b1 = _snmp(p)
                for k in FRAG_FIELDS:
                    frags[f.label][k] += b1[k] - b0[k]
            return res

        results = iperf.interleave(flows, cfg.throughput_reps, cfg.iperf_seconds, "overlay throughput", run=counted)
    finally:
        for s in servers:
            ol.procs.stop_proc(s)
        _rm(a, names_a)
        _rm(b, names_b)
        if swarm:
            b.cli("swarm", "leave", check=False, timeout=60)
            a.cli("swarm", "leave", "--force", check=False, timeout=60)
        if hv is not None:
            hv.remove()

    _throughput_report(ol, cfg, rep, results, frags)


def _throughput_report(ol: OverlayLab, cfg: Config, rep: Report, results: dict[str, list[iperf.Result]],
                       frags: dict[str, dict[str, int]]) -> None:  # fmt: skip
    a, b = ol.a, ol.b
    gbps = {label: [r.gbps for r in rs] for label, rs in results.items()}
    rep.raw["overlay-throughput"] = {"unit": "Gbit/s", "samples": gbps, "frag_deltas": frags}
    s = {label: summarize(xs) for label, xs in gbps.items()}
    t = Table(
        "Cross-host TCP throughput, container A → container B (iperf3, one stream)",
        ["path", "median Gbit/s", "min", "max", "n", "÷ hand-built", "÷ swarm", "retransmits (median)",
         "Δ FragCreates / ReasmReqds"],
    )  # fmt: skip
    for label, x in s.items():
        retr = statistics.median([r.retransmits for r in results[label]])
        t.add(label, fmt(x.median, 2), fmt(x.min, 2), fmt(x.max, 2), x.n, fmt_ratio(ratio(x.median, s[HAND].median)),
              fmt_ratio(ratio(x.median, s[SWARM].median)), fmt(retr, 0),
              f"{frags[label]['FragCreates']} / {frags[label]['ReasmReqds']}")  # fmt: skip
    t.notes += [
        f"hosts A and B are dockerd {a.kind} and {b.kind} on one underlay bridge (MTU {UNDERLAY_MTU}); the "
        f"client runs on A, the server on B; every container eth0 has MTU {MTU} (checked).",
        f"host iperf3 in each namespace (`nsenter --net=`), `iperf3 -c -t {cfg.iperf_seconds} -J`, receiver rate; "
        f"one {cfg.iperf_warmup_seconds}s warm-up per path discarded, {cfg.throughput_reps} rounds with the order "
        "rotated.",
        "pyoverlay: `-d pyoverlay --ipam-driver pyoverlay -o mode=overlay`: bridge + vxlan in each host's netns, "
        "where dockerd's firewall (FORWARD DROP, br_netfilter, conntrack) sees every frame; hand-built: the same "
        "bridge+vxlan (learning off, proxy, static FDB/neighbours) in a plain sandbox netns with no firewall, "
        "the VXLAN socket in the host netns (`build_hand_vxlan`); swarm: `docker swarm init` on A, `join` on B, "
        f"`docker network create -d overlay --attachable -o com.docker.network.driver.mtu={UNDERLAY_MTU}` "
        "(20.10 takes it as the underlay MTU).",
        "fragmentation: `Ip:` counters of /proc/net/snmp in the client's and server's netns and in both hosts' "
        "netns (where the outer packets are built and received), read before and after every measured run and "
        "summed: any non-zero FragCreates or ReasmReqds means an outer or inner packet was fragmented.",
        "swarm needs two engines of one kind: in this lab a swarm attachment times out on dockerd 28.5 "
        "(`attaching to network failed ... context deadline exceeded`), with a 20.10 or a 28.5 manager alike; "
        "so A and B both run 20.10 for all three variants.",
    ]
    rep.tables.append(t)
    rep.headline("overlay throughput: pyoverlay ÷ hand-built VXLAN (median)", fmt_vs(gbps[PO], gbps[HAND]),
                 "≥ 0.90", ratio(s[PO].median, s[HAND].median) >= 0.9)  # fmt: skip
    rep.headline("overlay throughput: pyoverlay ÷ Docker swarm overlay (median)", fmt_vs(gbps[PO], gbps[SWARM]))
    frag_total = sum(frags[label][k] for label in frags for k in ("FragCreates", "ReasmReqds"))
    rep.headline("fragments during the bulk transfers (FragCreates + ReasmReqds, all paths)", str(frag_total),
                 "0", frag_total == 0)  # fmt: skip


# ------------------------------------------------------------------ 2. etcd requests
def _metrics(ol: OverlayLab) -> dict[str, float]:
    """grpc_server_msg_received_total by method, summed over the members (client requests, stream messages)."""
    out: dict[str, float] = {}
    for url in ol.mh.etcd.endpoints:
        text = _out(["nsenter", f"--net={ol.a.netns.path}", "curl", "-sf", "--max-time", "5", f"{url}/metrics"])
        for line in text.splitlines():
            if line.startswith("grpc_server_msg_received_total{"):
                labels, _, value = line.rpartition(" ")
                method = labels.split('grpc_method="', 1)[1].split('"', 1)[0]
                out[method] = out.get(method, 0.0) + float(value)
    return out


def _delta(m1: dict[str, float], m0: dict[str, float]) -> dict[str, float]:
    return {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1.keys() | m0.keys()}


COLUMNS = (
    ("Range", ("Range",)), ("Txn", ("Txn",)), ("Put", ("Put",)), ("DeleteRange", ("DeleteRange",)),
    ("lease", ("LeaseGrant", "LeaseRevoke", "LeaseKeepAlive", "LeaseTimeToLive")), ("Watch", ("Watch",)),
)  # fmt: skip


def _columns(d: dict[str, float]) -> dict[str, float]:
    named = {m for _, ms in COLUMNS for m in ms}
    out = {col: sum(d.get(m, 0.0) for m in ms) for col, ms in COLUMNS}
    out["other"] = sum(v for k, v in d.items() if k not in named)
    out["total"] = sum(d.values())
    return out


def _window(ol: OverlayLab, action: Callable[[], None], settle: float) -> tuple[dict[str, float], float]:
    """(requests during `action` + `settle`, its length)."""
    m0, t0 = _metrics(ol), time.monotonic()
    action()
    time.sleep(settle)
    m1 = _metrics(ol)
    return _delta(m1, m0), time.monotonic() - t0


def _idle(ol: OverlayLab, seconds: float) -> dict[str, float]:
    m0 = _metrics(ol)
    time.sleep(seconds)
    return _delta(_metrics(ol), m0)


def etcd_requests(ol: OverlayLab, cfg: Config, rep: Report) -> None:
    a, n = ol.a, cfg.etcd_starts
    per: dict[str, list[dict[str, float]]] = {"start": [], "remove": []}
    background: list[dict[str, float]] = []
    seconds: dict[str, list[float]] = {"start": [], "remove": []}
    settle = 1.5  # an endpoint's removal is told to etcd by the background sync, just after
    a.run_container("etcd-warm", "--network", NET, cmd=("sleep", "86400"))  # the first start pays one-off costs
    _rm(a, ["etcd-warm"])
    time.sleep(settle)
    for r in range(cfg.etcd_rounds):
        names = [f"etcd-{r}-{i}" for i in range(n)]
        for what, act in (
            ("start", lambda ns=names: [a.run_container(x, "--network", NET, cmd=("sleep", "86400")) for x in ns]),
            ("remove", lambda ns=names: [a.cli("rm", "-f", x) for x in ns]),
        ):
            busy, length = _window(ol, act, settle)
            bg = _idle(ol, length)
            background.append({k: v / length for k, v in bg.items()})
            per[what].append({k: (busy.get(k, 0.0) - bg.get(k, 0.0)) / n for k in busy.keys() | bg.keys()})
            seconds[what].append(length)
        log.info("etcd requests: round %d/%d", r + 1, cfg.etcd_rounds)

    rep.raw["overlay-etcd"] = {"per": per, "background_per_s": background, "window_s": seconds}
    t = Table(
        f"etcd requests per container start / removal on host A (median of {cfg.etcd_rounds} rounds of {n})",
        ["operation", *(c for c, _ in COLUMNS), "other", "total", "total min..max"],
    )
    totals: dict[str, float] = {}
    for what, rounds in per.items():
        cols = [_columns(x) for x in rounds]
        med = {c: statistics.median([x[c] for x in cols]) for c in cols[0]}
        totals[what] = med["total"]
        tot = [x["total"] for x in cols]
        t.add(f"docker {'run -d' if what == 'start' else 'rm -f'}", *(fmt(med[c]) for c, _ in COLUMNS),
              fmt(med["other"]), fmt(med["total"]), f"{fmt(min(tot))}..{fmt(max(tot))}")  # fmt: skip
    bgc = [_columns(x) for x in background]
    bg_med = {c: statistics.median([x[c] for x in bgc]) for c in bgc[0]}
    t.add("background per second (idle)", *(fmt(bg_med[c], 2) for c, _ in COLUMNS), fmt(bg_med["other"], 2),
          fmt(bg_med["total"], 2), "-")  # fmt: skip
    t.notes += [
        "`grpc_server_msg_received_total` by grpc_method from every member's /metrics, summed over the 3 members: "
        "the requests clients sent (unary calls; for the Watch and LeaseKeepAlive streams, messages sent up "
        "the stream). Both hosts' drivers are the only etcd clients during the windows.",
        f"a window = {n} sequential `docker run -d --network {NET} bb sleep` (or `docker rm -f`) on A, then "
        f"{settle}s for the background sync that tells etcd of a removal; the background is an idle window of "
        "the same length just after, subtracted; per operation = (window - idle) / "
        f"{n}. Fractions come from that subtraction (e.g. a periodic 30 s sync landing in one window only).",
        f"background: both overlay hosts renew their lease every {TTL / 3:.1f}s (`--host-ttl {TTL}`) and resync "
        "every 30 s; window lengths (s): start " + ", ".join(fmt(x) for x in seconds["start"])
        + "; remove " + ", ".join(fmt(x) for x in seconds["remove"]) + ".",
    ]  # fmt: skip
    rep.tables.append(t)
    rep.headline("etcd requests per docker run -d / docker rm -f (median)",
                 f"{fmt(totals['start'])} / {fmt(totals['remove'])}")  # fmt: skip


# ------------------------------------------------------------------ 3. convergence
def _add_background(ol: OverlayLab, names: list[str], target: int) -> dict[str, str | None]:
    new = [f"cvbg-{i:04d}" for i in range(len(names), target)]
    macs = {n: f"02:cb:00:00:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}" for i, n in enumerate(new, len(names))}
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(lambda x: _run_with_mac(ol.a, x, macs[x]), new))
    names += new
    return dict.fromkeys(macs.values(), ol.a.ip)


def _run_with_mac(h: HostNode, name: str, mac: str, *extra: str) -> None:
    # The 20.10 CLI: the 28 CLI sends --mac-address per network, which needs API 1.44 (20.10 speaks 1.41).
    h.cli("run", "-d", "--name", name, "--network", NET, "--mac-address", mac, *extra, "bb", "sleep", "86400",
          client="20.10" if h.kind == "20.10" else "28")  # fmt: skip


METRICS = ("add", "add_cmd", "neigh_cmd", "gone", "gone_cmd", "run_s", "rm_s")


def _sample(ol: OverlayLab, cfg: Config, name: str, mac: str, ip: str) -> dict[str, float] | None:
    """One container up and down on A, watched on B; None if B did not see it within 10 s."""
    a, poll = ol.a, ol.poll
    poll.start(ol.dev_b, fdb={mac: a.ip}, neigh={ip: mac}, timeout=10, interval=cfg.poll_interval)
    t0 = time.monotonic()
    _run_with_mac(a, name, mac, "--ip", ip)
    t1 = time.monotonic()
    up = poll.result()
    poll.start(ol.dev_b, fdb_absent=[mac], neigh_absent=[ip], timeout=10, interval=cfg.poll_interval)
    t2 = time.monotonic()
    a.cli("rm", "-f", name)
    t3 = time.monotonic()
    down = poll.result()
    if not (up["ok"] and down["ok"]):
        log.warning("convergence %s: not within 10s: up %s down %s", name, up, down)
        return None
    return {
        "add": up["t"]["fdb"] - t1,  # negative: B had it before `docker run -d` returned
        "add_cmd": up["t"]["fdb"] - t0,
        "neigh_cmd": up["t"]["neigh"] - t0,
        "gone": down["t"]["fdb_absent"] - t3,
        "gone_cmd": down["t"]["fdb_absent"] - t2,
        "run_s": t1 - t0,
        "rm_s": t3 - t2,
    }


def convergence(ol: OverlayLab, cfg: Config, rep: Report) -> None:
    background: list[str] = []
    samples: dict[int, dict[str, list[float]]] = {}
    misses: dict[int, int] = {}
    try:
        bg_fdb: dict[str, str | None] = {}
        for k, size in enumerate(cfg.convergence_sizes):
            bg_fdb |= _add_background(ol, background, size)
            r = ol.poll.wait(ol.dev_b, fdb=bg_fdb, timeout=60, interval=0.05)
            if not r["ok"]:
                raise RuntimeError(f"background endpoints not programmed on B: {r['missing']}")
            samples[size], misses[size] = {m: [] for m in METRICS}, 0
            for i in range(cfg.convergence_warmup + cfg.convergence_samples):
                mac, ip = f"02:cc:{k:02x}:00:{(i >> 8) & 0xFF:02x}:{i & 0xFF:02x}", f"10.70.{200 + k}.{i + 10}"
                got = _sample(ol, cfg, f"cv-{size}-{i}", mac, ip)
                if i < cfg.convergence_warmup:
                    continue
                if got is None:
                    misses[size] += 1
                    continue
                for m, v in got.items():
                    samples[size][m].append(v)
            cmd = samples[size]["add_cmd"]
            log.info("convergence with %d endpoints: from invocation p50 %.0f ms, p99 %.0f ms", size,
                     1000 * _median(cmd), 1000 * percentile(cmd, 99))  # fmt: skip
    finally:
        t0 = time.monotonic()
        try:
            _rm(ol.a, background, timeout=900)
        except Exception as err:
            rep.errors.append(f"overlay convergence: removing the {len(background)} background containers with one "
                              f"`docker rm -f` on A failed after {time.monotonic() - t0:.0f}s: {type(err).__name__}")
        removed_s = time.monotonic() - t0
        log.info("convergence: %d background containers removed in %.1fs", len(background), removed_s)
    rep.raw["overlay-convergence"] = {"unit": "s", "samples": samples, "misses": misses, "bulk_rm_s": removed_s}
    _convergence_report(cfg, rep, samples, misses)
    rep.tables[-1].notes.append(f"afterwards one `docker rm -f` of the {len(background)} background containers on A "
                                f"took {removed_s:.1f}s.")


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _convergence_report(cfg: Config, rep: Report, samples: dict[int, dict[str, list[float]]],
                        misses: dict[int, int]) -> None:  # fmt: skip
    t = Table(
        "Convergence: a container started / removed on A, seen on B (ms)",
        ["endpoints already there", "n", "in B's FDB before `run` returned", "add after return p99",
         "add from invocation p50", "p99", "max", "neighbour from invocation p50", "rm: gone before `rm` returned",
         "gone from invocation p50", "p99", "max", "docker run -d p50", "docker rm -f p50", "not within 10 s"],
    )  # fmt: skip
    for size, s in samples.items():
        after = summarize([max(0.0, x) for x in s["add"]]).scaled(1000)
        cmd, gone = summarize(s["add_cmd"]).scaled(1000), summarize(s["gone_cmd"]).scaled(1000)
        early = sum(1 for x in s["add"] if x <= 0)
        early_rm = sum(1 for x in s["gone"] if x <= 0)
        t.add(size, cmd.n, f"{early}/{cmd.n}", fmt(after.p99), fmt(cmd.median), fmt(cmd.p99), fmt(cmd.max),
              fmt(1000 * _median(s["neigh_cmd"])), f"{early_rm}/{cmd.n}", fmt(gone.median), fmt(gone.p99),
              fmt(gone.max), fmt(1000 * _median(s["run_s"]), 0), fmt(1000 * _median(s["rm_s"]), 0),
              misses[size])  # fmt: skip
    first, last = cfg.convergence_sizes[0], cfg.convergence_sizes[-1]
    growth = ratio(_median(samples[last]["add_cmd"]), _median(samples[first]["add_cmd"]))
    growth_rm = ratio(_median(samples[last]["gone_cmd"]), _median(samples[first]["gone_cmd"]))
    t.notes += [
        f"per sample: `docker run -d --network {NET} --mac-address M --ip I bb sleep` on A (known MAC and "
        "address, so B is watched from before the command runs), then `docker rm -f`; a netlink poller in B's "
        f"netns dumps the vxlan device's FDB and neighbour rows every {cfg.poll_interval * 1000:.0f} ms "
        "(raw rtnetlink, well under a millisecond per dump).",
        "'add after return' = from `docker run -d` returning on A to the first dump with M → A's VTEP in B's "
        "FDB, 0 when it was there already (pyoverlay publishes in CreateEndpoint, before dockerd starts the "
        "container, so this is the usual case); 'from invocation' = from the moment the command was run, the "
        "figure that still carries the cost; rm: the same from `docker rm -f` to the first dump without M "
        "(the driver withdraws from the background sync, not in the request).",
        f"the background endpoints are `bb sleep` containers on A (so B holds that many remote entries), "
        f"added {PARALLEL} at a time; {cfg.convergence_warmup} warm-up sample(s) per size discarded.",
        f"growth of the p50 from invocation, {first} → {last} endpoints: add x{fmt_ratio(growth)}, "
        f"remove x{fmt_ratio(growth_rm)}.",
    ]
    rep.tables.append(t)
    sizes = ", ".join(map(str, samples))
    worst_after = max(percentile([max(0.0, x) for x in s["add"]], 99) for s in samples.values())
    rep.headline(f"convergence run → B's FDB, p99 ms after `run` returns (worst of {sizes} endpoints)",
                 fmt(1000 * worst_after, 0), "< 1000", worst_after < 1.0 and not sum(misses.values()))  # fmt: skip
    rep.headline(f"convergence from `docker run` invocation, p50 / p99 ms at {sizes} endpoints",
                 " ; ".join(f"{fmt(1000 * _median(s['add_cmd']), 0)} / {fmt(1000 * percentile(s['add_cmd'], 99), 0)}"
                            for s in samples.values()), "flat", growth <= 1.5)  # fmt: skip
    rep.headline(f"removal from `docker rm -f` invocation, p50 / p99 ms at {sizes} endpoints",
                 " ; ".join(f"{fmt(1000 * _median(s['gone_cmd']), 0)} / {fmt(1000 * percentile(s['gone_cmd'], 99), 0)}"
                            for s in samples.values()))  # fmt: skip


# ------------------------------------------------------------------ 4. RSS
def _ready(h: HostNode) -> float:
    """Block until the driver's app answers Plugin.Activate (the socket is bound before the app is up); when."""
    if h.driver is None:
        raise RuntimeError(f"{h.name}: no driver")
    status, body = h.driver.post("Plugin.Activate", timeout=60)
    if status != 200:
        raise RuntimeError(f"{h.name}: Plugin.Activate answered {status} {body}")
    return time.monotonic()


def _steady_status(h: HostNode, settle: float, timeout: float = 30.0) -> dict[str, int]:
    """/proc/PID/status once the app answers, `settle` seconds have passed and VmRSS held still for 1 s."""
    _ready(h)
    time.sleep(settle)
    pid = h.driver.pid if h.driver else None
    if pid is None:
        raise RuntimeError(f"{h.name}: driver not running")
    deadline, prev, still = time.monotonic() + timeout, -1, 0
    while True:
        st = proc_status(pid)
        still = still + 1 if abs(st["VmRSS"] - prev) <= 64 else 0
        if still >= 2 or time.monotonic() > deadline:
            return st
        prev = st["VmRSS"]
        time.sleep(0.5)


def rss(ol: OverlayLab, cfg: Config, rep: Report) -> None:
    b, c, poll, settle = ol.b, ol.c, ol.poll, 2.0
    fs = fake_set(900, cfg.rss_remote)
    labels = ("bridge-only driver (host C)", "overlay driver, 0 remote endpoints",
              f"overlay driver, {cfg.rss_remote} remote endpoints")  # fmt: skip
    rows: dict[str, list[dict[str, int]]] = {label: [] for label in labels}

    def bridge_only() -> dict[str, int]:
        c.restart_driver()
        return _steady_status(c, settle)

    def zero() -> dict[str, int]:
        delete_fakes(ol)
        if not poll.wait(ol.dev_b, fdb_absent=list(fs.fdb), timeout=30, interval=0.05)["ok"]:
            raise RuntimeError("fake endpoints not removed on B")
        b.restart_driver()
        return _steady_status(b, settle)

    def some() -> dict[str, int]:
        put_fakes(ol, fs)
        b.restart_driver()
        if not poll.wait(ol.dev_b, fdb=fs.fdb, neigh=fs.neigh, timeout=60, interval=0.05)["ok"]:
            raise RuntimeError("fake endpoints not programmed on B")
        return _steady_status(b, settle)

    steps = (bridge_only, zero, some)
    try:
        for r in range(cfg.rss_reps):
            for j in [(r + k) % 3 for k in range(3)]:
                rows[labels[j]].append(steps[j]())
            log.info("rss: round %d/%d", r + 1, cfg.rss_reps)
    finally:
        delete_fakes(ol)

    rep.raw["overlay-rss"] = {"unit": "kB", "rows": rows}
    base = statistics.median([x["VmRSS"] for x in rows[labels[0]]])
    t = Table(
        "Driver memory after a restart (VmRSS / VmHWM of the driver process, MB)",
        ["driver", "VmRSS median", "min", "max", "VmHWM median", "n", "Δ VmRSS vs bridge-only"],
    )
    for label in labels:
        v = summarize([x["VmRSS"] / 1024 for x in rows[label]])
        hwm = statistics.median([x["VmHWM"] / 1024 for x in rows[label]])
        t.add(label, fmt(v.median), fmt(v.min), fmt(v.max), fmt(hwm), v.n, f"{v.median - base / 1024:+.1f}")
    t.notes += [
        f"each figure after a restart of the driver (SIGTERM, start), once it answers Plugin.Activate (the socket "
        f"is bound before the app is up), {settle:.0f}s more and VmRSS still for 1 s; {cfg.rss_reps} rounds with "
        "the order rotated; /proc/PID/status.",
        "bridge-only: host C's pyoverlay without `--store` (no etcd client, no cluster threads), one idle "
        f"`-d pyoverlay` bridge network; overlay: host B's pyoverlay with `--store etcd`, the `{OVERLAY}` overlay "
        f"attached, no local containers; remote endpoints: {cfg.rss_remote} records of 10 fake hosts put into "
        "etcd before the restart, all in B's FDB and neighbour table before the figure is read.",
    ]
    rep.tables.append(t)
    med = {label: statistics.median([x["VmRSS"] / 1024 for x in rows[label]]) for label in labels}
    rep.headline(f"driver VmRSS MB: bridge-only / overlay 0 / overlay {cfg.rss_remote} remote",
                 " / ".join(fmt(med[label]) for label in labels))  # fmt: skip


# ------------------------------------------------------------------ 5. resync
def _batch_floor(ol: OverlayLab, fs: FakeSet) -> float:
    """The kernel floor: the same FDB + neighbour rows written by `bridge -batch` + `ip -batch` on a scratch vxlan."""
    if ol.scratch is None:
        ol.scratch = ol.mh.lab.netns("brsx")
    ns = ol.scratch
    ns.ip("link", "del", "vxs", check=False)
    ns.ip("link", "add", "vxs", "type", "vxlan", "id", "9999", "dstport", "4789", "nolearning", "proxy")
    ns.ip("link", "set", "vxs", "up")
    d = ol.mh.lab.dir / "batch"
    d.mkdir(exist_ok=True)
    (d / "fdb").write_text("".join(f"fdb replace {m} dev vxs dst {v} self permanent\n" for m, v in fs.fdb.items()))
    (d / "neigh").write_text("".join(f"neigh replace {ip} lladdr {m} dev vxs nud permanent\n"
                                     for ip, m in fs.neigh.items()))  # fmt: skip
    t0 = time.monotonic()
    ns.run("bridge", "-batch", str(d / "fdb"))
    ns.run("ip", "-batch", str(d / "neigh"))
    return time.monotonic() - t0


def _flush_kernel(ol: OverlayLab, fs: FakeSet) -> None:
    d = ol.mh.lab.dir / "batch"
    d.mkdir(exist_ok=True)
    dev = ol.dev_b
    (d / "fdb-del").write_text("".join(f"fdb del {m} dev {dev} self\n" for m in fs.fdb))
    (d / "neigh-del").write_text("".join(f"neigh del {ip} dev {dev}\n" for ip in fs.neigh))
    ol.b.netns.run("bridge", "-batch", str(d / "fdb-del"))
    ol.b.netns.run("ip", "-batch", str(d / "neigh-del"))


def _restart_and_wait(ol: OverlayLab, want: FakeSet, old: FakeSet | None, socket_s: list[float]) -> float:
    """Start B's driver (it is down); seconds from the spawn until B's kernel holds `want` and none of `old`."""
    ol.poll.start(ol.dev_b, fdb=want.fdb, neigh=want.neigh, fdb_absent=list(old.fdb) if old else None,
                  neigh_absent=list(old.neigh) if old else None, timeout=120, interval=0.02, duty=BIG_DUTY)  # fmt: skip
    t0 = time.monotonic()
    ol.b.start_driver()
    socket_s.append(_ready(ol.b) - t0)
    res = ol.poll.result()
    if not res["ok"]:
        raise RuntimeError(f"resync: not within 120s: {res['missing']}")
    return float(res["t"]["all"] - t0)


@dataclass
class _Resync:
    flushed: list[float] = field(default_factory=list)
    changed: list[float] = field(default_factory=list)
    live: list[float] = field(default_factory=list)
    driver_start_to_ready: list[float] = field(default_factory=list)
    iproute2_batch: list[float] = field(default_factory=list)
    warm_bad_polls: list[int] = field(default_factory=list)
    warm_polls: list[int] = field(default_factory=list)


def _resync_round(ol: OverlayLab, cur: FakeSet, n: int, acc: _Resync) -> FakeSet:
    """One round of (0), (a), (b), (c) and the floor; returns the set now in etcd."""
    b, poll = ol.b, ol.poll
    # (0) a plain kill -9 + restart: the rows must stay put throughout
    b.kill_driver()
    poll.start(ol.dev_b, fdb=cur.fdb, neigh=cur.neigh, timeout=120, interval=0.02, duty=BIG_DUTY, hold=WARM_HOLD)
    t0 = time.monotonic()
    b.start_driver()
    acc.driver_start_to_ready.append(_ready(b) - t0)
    held = poll.result()
    acc.warm_bad_polls.append(int(held["bad_polls"]))
    acc.warm_polls.append(int(held["polls"]))
    # (a) kernel rows lost while the driver was down, etcd unchanged
    b.kill_driver()
    _flush_kernel(ol, cur)
    acc.flushed.append(_restart_and_wait(ol, cur, None, acc.driver_start_to_ready))
    # (b) every remote endpoint replaced while the driver was down
    b.kill_driver()
    new = fake_set(cur.ident + 1, n)
    delete_fakes(ol)
    put_fakes(ol, new)
    acc.changed.append(_restart_and_wait(ol, new, cur, acc.driver_start_to_ready))
    # (c) the same replacement with the driver running (the watch path), from the first etcd write
    newer = fake_set(new.ident + 1, n)
    poll.start(ol.dev_b, fdb=newer.fdb, neigh=newer.neigh, fdb_absent=list(new.fdb), neigh_absent=list(new.neigh),
               timeout=120, interval=0.02, duty=BIG_DUTY)  # fmt: skip
    t0 = time.monotonic()
    delete_fakes(ol)
    put_fakes(ol, newer)
    res = poll.result()
    if not res["ok"]:
        raise RuntimeError(f"live replacement: not within 120s: {res['missing']}")
    acc.live.append(res["t"]["all"] - t0)
    acc.iproute2_batch.append(_batch_floor(ol, newer))
    return newer


def resync(ol: OverlayLab, cfg: Config, rep: Report) -> None:
    n, acc = cfg.resync_endpoints, _Resync()
    cur = fake_set(0, n)
    try:
        t0 = time.monotonic()
        put_fakes(ol, cur)
        r = ol.poll.wait(ol.dev_b, fdb=cur.fdb, neigh=cur.neigh, timeout=120, interval=0.02, duty=BIG_DUTY)
        if not r["ok"]:
            raise RuntimeError(f"{n} fake endpoints not programmed on B: {r['missing']}")
        first_load = r["t"]["all"] - t0
        for i in range(cfg.resync_reps):
            cur = _resync_round(ol, cur, n, acc)
            log.info("resync: round %d/%d: flushed %.2fs, changed %.2fs, live %.2fs", i + 1, cfg.resync_reps,
                     acc.flushed[-1], acc.changed[-1], acc.live[-1])  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            if not ol.b.driver or not ol.b.driver.running:
                ol.b.start_driver()
        delete_fakes(ol)

    series = {k: v for k, v in vars(acc).items() if not k.startswith("warm")}
    rep.raw["overlay-resync"] = {"unit": "s", "endpoints": n, "first_load": first_load, **vars(acc)}
    _resync_report(cfg, rep, series, first_load)
    rep.tables[-1].notes.append(
        f"(0) a plain kill -9 + restart with the rows intact, watched for {WARM_HOLD:.0f}s from the spawn: dumps "
        f"that found a row missing: {sum(acc.warm_bad_polls)} of {sum(acc.warm_polls)} (over "
        f"{len(acc.warm_polls)} restarts); it must be 0 (a restart must not disturb what is programmed)."
    )


def _resync_report(cfg: Config, rep: Report, series: dict[str, list[float]], first_load: float) -> None:
    n = cfg.resync_endpoints
    flushed, changed, socket_s = series["flushed"], series["changed"], series["driver_start_to_ready"]
    t = Table(
        f"Resync of {n:,} remote endpoints on host B (seconds)",
        ["what", "median", "min", "max", "n", "÷ iproute2 batch floor"],
    )
    sock, floor = summarize(socket_s).median, summarize(series["iproute2_batch"]).median
    for label, xs in (
        ("(a) kill -9, kernel rows flushed, restart → all back", flushed),
        (f"(b) kill -9, all {n:,} replaced in etcd, restart → new in, old out", changed),
        (f"(c) driver running, all {n:,} replaced in etcd → new in, old out", series["live"]),
        ("floor: driver spawn → app answers Plugin.Activate", socket_s),
        (f"floor: `bridge -batch` + `ip -batch` writing the {n:,} FDB and neighbour rows", series["iproute2_batch"]),
    ):
        x = summarize(xs)
        t.add(label, fmt(x.median, 2), fmt(x.min, 2), fmt(x.max, 2), x.n, fmt_ratio(ratio(x.median, floor)))
    t.notes += [
        f"{n:,} PeerRecords of 10 fake hosts (VTEPs 10.99.0.51-60, nothing there) written into etcd with "
        f"`etcdctl txn` ({TXN_OPS} puts each) under `{PREFIX}peers/{OVERLAY}/<host>/<endpoint>`, as another host "
        "would publish them; 'all back' = every MAC → VTEP row in the vxlan device's FDB and every IP → MAC "
        "neighbour, seen by the netlink poller in B's netns (a dump every 20 ms, or less often so that the poller "
        f"takes at most {BIG_DUTY:.0%} of a CPU: ~14 ms per dump of 2,000 rows, so every ~0.15 s).",
        "a restart that finds the kernel rows intact has nothing to program (they survive the driver), so the "
        "measured restarts make it work: (a) the rows were deleted while the driver was down (a host whose "
        "netns state was lost), (b) all endpoints changed while it was down (deletes the old rows, adds the new: "
        f"{2 * n:,} FDB and {2 * n:,} neighbour changes); times from the driver's spawn (kill -9, then start) "
        "to the last row. (c) is the live path for comparison, timed from the first etcd write (the "
        "`etcdctl` calls themselves included).",
        f"first load of the {n:,} with the driver running: {first_load:.2f}s from the first `etcdctl txn`; "
        f"{cfg.resync_reps} rounds of (a), (b), (c), floor.",
    ]
    rep.tables.append(t)
    rep.headline(f"resync of {n:,} remote endpoints after kill -9 + restart (flushed / all changed), median s",
                 f"{fmt(summarize(flushed).median, 2)} / {fmt(summarize(changed).median, 2)} "
                 f"(driver spawn → app up {fmt(sock, 2)})")  # fmt: skip


# ------------------------------------------------------------------ entry point
RUNNERS: dict[str, Callable[[OverlayLab, Config, Report], None]] = {
    "throughput": throughput,
    "etcd": etcd_requests,
    "convergence": convergence,
    "rss": rss,
    "resync": resync,
}


def run_all(
    cfg: Config, rep: Report, durations: list[str], driver_rev: str | None = None
) -> tuple[int | str | None, list[str]]:
    """Build the lab, run the selected parts in order, tear down; (exit code if interrupted, teardown errors)."""
    rev: list[str] = []
    code: int | str | None = None
    with _lab(cfg.overlay_kinds, rev, driver_rev) as (ol, teardown_errors):
        _create_overlay(ol)
        a, b = ol.a, ol.b
        etcd_version = ol.etcdctl("version").split("\n")[0]
        rep.context += [
            ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
            ("hosts", f"A = h1 dockerd {a.cli('version', '--format', '{{.Server.Version}}').stdout.strip()}, "
                      f"B = h2 dockerd {b.cli('version', '--format', '{{.Server.Version}}').stdout.strip()}, "
                      f"C = h3 dockerd {ol.c.kind} (bridge-only driver), each in its own lab netns, on one "
                      f"underlay bridge with MTU {UNDERLAY_MTU}"),
            ("etcd", f"3 members on the underlay ({etcd_version}); drivers with `--store etcd --host-ttl {TTL}`"),
            ("driver", f"pyoverlay {rev[0]}, log level info, Python {platform.python_version()}"),
            ("machine", f"{os.cpu_count()} CPUs, kernel {platform.release()}"),
        ]
        for part in cfg.overlay_parts:
            t0 = time.monotonic()
            log.info("=== overlay %s", part)
            try:
                RUNNERS[part](ol, cfg, rep)
            except Exception as err:
                log.exception("overlay %s failed", part)
                rep.errors.append(f"overlay {part}: {type(err).__name__}: {err}")
            except (KeyboardInterrupt, SystemExit) as err:
                rep.errors.append(f"overlay {part}: interrupted; the report is partial")
                code = 130 if isinstance(err, KeyboardInterrupt) else err.code
                break
            finally:
                durations.append(f"{part} {time.monotonic() - t0:.0f}s")
        log.info("tearing the lab down")
    return code, teardown_errors
