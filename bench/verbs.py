"""Per-verb latency: dockerd-shaped requests straight to the driver's socket (httpx over the Unix socket).

One cycle is what dockerd sends for one `docker run --rm` on a network with no published
ports (captures/dockerd-28.5-local.jsonl): CreateEndpoint, Join, ProgramExternalConnectivity,
EndpointOperInfo, then RevokeExternalConnectivity, Leave, DeleteEndpoint. GetCapabilities,
answered without the worker thread or any I/O, is the floor: HTTP + ASGI + JSON alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx

from bench.config import Config
from bench.context import Bench
from bench.report import Report, Table, fmt
from bench.stats import summarize

log = logging.getLogger("bench")

ACCEPT = "application/vnd.docker.plugins.v1.2+json"
HEADERS = {"Host": "", "User-Agent": "Go-http-client/1.1", "Accept": ACCEPT}
SUBNET = ipaddress.ip_network("10.70.0.0/16")
NO_PORTS: dict[str, list[Any]] = {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": []}
CAPS = "NetworkDriver.GetCapabilities"
CYCLE = (
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.Join",
    "NetworkDriver.ProgramExternalConnectivity",
    "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.RevokeExternalConnectivity",
    "NetworkDriver.Leave",
    "NetworkDriver.DeleteEndpoint",
)
HEADLINE_VERBS = ("NetworkDriver.CreateEndpoint", "NetworkDriver.Join", "NetworkDriver.DeleteEndpoint")

Samples = dict[str, list[float]]


def _encode(body: dict[str, Any] | None) -> bytes:
    # Go's json.Encoder: compact, newline-terminated; verbs without a body get none.
    return b"" if body is None else (json.dumps(body, separators=(",", ":")) + "\n").encode()


def _check(verb: str, r: httpx.Response) -> None:
    if r.status_code != 200 or (r.content and "Err" in r.json()):
        raise RuntimeError(f"{verb}: HTTP {r.status_code} {r.text[:300]}")


class Endpoints:
    """Fresh endpoint IDs and addresses in SUBNET (the gateway .1 excluded)."""

    def __init__(self) -> None:
        self._hosts: Iterator[ipaddress.IPv4Address | ipaddress.IPv6Address] = SUBNET.hosts()
        next(self._hosts)

    def next(self) -> tuple[str, str]:
        return secrets.token_hex(32), f"{next(self._hosts)}/{SUBNET.prefixlen}"


def bodies(nid: str, eid: str, address: str) -> list[tuple[str, dict[str, Any]]]:
    ep = {"NetworkID": nid, "EndpointID": eid}
    return [
        (CYCLE[0], {**ep, "Interface": {"Address": address, "AddressIPv6": "", "MacAddress": ""}, "Options": NO_PORTS}),
        (CYCLE[1], {**ep, "SandboxKey": f"/var/run/docker/netns/{secrets.token_hex(6)}", "Options": NO_PORTS}),
        (CYCLE[2], {**ep, "Options": {"com.docker.network.driver.private.no_proxy_6to4": False, **NO_PORTS}}),
        (CYCLE[3], ep),
        (CYCLE[4], ep),
        (CYCLE[5], ep),
        (CYCLE[6], ep),
    ]


class Wire:
    def __init__(self, sock: str) -> None:
        self.client = httpx.Client(transport=httpx.HTTPTransport(uds=sock), base_url="http://plugin", timeout=60)

    def post(self, verb: str, body: dict[str, Any] | None) -> float:
        data = _encode(body)
        t0 = time.perf_counter()
        r = self.client.post(f"/{verb}", content=data, headers=HEADERS)
        dt = time.perf_counter() - t0
        _check(verb, r)
        return dt

    def cycle(self, nid: str, eps: Endpoints, samples: Samples) -> None:
        samples.setdefault(CAPS, []).append(self.post(CAPS, None))
        for verb, body in bodies(nid, *eps.next()):
            samples.setdefault(verb, []).append(self.post(verb, body))

    def close(self) -> None:
        self.client.close()


async def _concurrent(sock: str, nid: str, eps: Endpoints, cycles: int, concurrency: int) -> tuple[Samples, float]:
    samples: Samples = {}
    todo = iter(range(cycles))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    transport = httpx.AsyncHTTPTransport(uds=sock, limits=limits)
    async with httpx.AsyncClient(transport=transport, base_url="http://plugin", timeout=120) as client:

        async def worker() -> None:
            for _ in todo:
                for verb, body in bodies(nid, *eps.next()):
                    t0 = time.perf_counter()
                    r = await client.post(f"/{verb}", content=_encode(body), headers=HEADERS)
                    samples.setdefault(verb, []).append(time.perf_counter() - t0)
                    _check(verb, r)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return samples, time.perf_counter() - t0


def _series(wire: Wire, nid: str, eps: Endpoints, cycles: int, what: str) -> Samples:
    samples: Samples = {}
    for i in range(cycles):
        wire.cycle(nid, eps, samples)
        if (i + 1) % 20 == 0:
            log.info("verbs (%s): cycle %d/%d", what, i + 1, cycles)
    return samples


def run(b: Bench, cfg: Config, rep: Report) -> None:
    sock = str(b.drv.socket_path)
    wire = Wire(sock)
    nid = secrets.token_hex(32)
    eps = Endpoints()
    series: list[tuple[str, int, Samples]] = []
    rate = 0.0
    try:
        wire.post("NetworkDriver.CreateNetwork", {
            "NetworkID": nid,
            "Options": {"com.docker.network.enable_ipv4": True, "com.docker.network.enable_ipv6": False,
                        "com.docker.network.generic": {}},
            "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": f"{SUBNET[1]}/{SUBNET.prefixlen}",
                          "Pool": str(SUBNET)}],
            "IPv6Data": [],
        })
        for _ in range(cfg.verbs_warmup):
            wire.cycle(nid, eps, {})
        series.append(("0", 1, _series(wire, nid, eps, cfg.verbs_cycles, "empty network")))
        samples, wall = asyncio.run(_concurrent(sock, nid, eps, cfg.verbs_concurrent_cycles, cfg.verbs_concurrency))
        rate = cfg.verbs_concurrent_cycles / wall
        series.append(("0", cfg.verbs_concurrency, samples))
        for _ in range(cfg.verbs_background):  # endpoints that stay, created and joined as dockerd would
            eid, addr = eps.next()
            for verb, body in bodies(nid, eid, addr)[:3]:
                wire.post(verb, body)
        series.append((str(cfg.verbs_background), 1, _series(
            wire, nid, eps, cfg.verbs_background_cycles, f"{cfg.verbs_background} endpoints"
        )))
    finally:
        try:  # removes the background endpoints with it
            wire.post("NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        except Exception as err:
            log.warning("verbs: DeleteNetwork failed: %s", err)
        wire.close()
    _report(cfg, rep, series, rate)


def _report(cfg: Config, rep: Report, series: list[tuple[str, int, Samples]], rate: float) -> None:
    rep.raw["verbs"] = {
        "unit": "s", "series": [{"endpoints": s, "concurrency": c, "samples": x} for s, c, x in series],
    }
    t = Table(
        "Driver latency per verb (socket, dockerd-shaped bodies)",
        ["verb", "endpoints", "concurrency", "p50 ms", "p99 ms", "min ms", "max ms", "n"],
    )
    for size, conc, samples in series:
        for verb in (CAPS, *CYCLE):
            if verb not in samples:
                continue
            s = summarize(samples[verb]).scaled(1000)
            t.add(verb.split(".", 1)[1], size, conc, fmt(s.median, 2), fmt(s.p99, 2), fmt(s.min, 2), fmt(s.max, 2),
                  s.n)
    cycle_ms = {
        size: sum(summarize(samples[v]).median for v in CYCLE) * 1000 for size, conc, samples in series if conc == 1
    }
    t.notes += [
        "the engine's own driver (dockerd's netns and firewall), a network created on the socket with subnet "
        f"{SUBNET}; each cycle is the 7 verbs dockerd sends for one container, with fresh IDs; "
        f"{cfg.verbs_warmup} warm-up cycles discarded; client-side wall time per request (keep-alive connection).",
        "endpoints = how many other endpoints (created and joined, each a veth pair in dockerd's netns) exist "
        f"during the series; at concurrency {cfg.verbs_concurrency} up to {cfg.verbs_concurrency} cycles are in "
        "flight, so as many extra endpoints exist.",
        "sum of the p50s of one cycle: "
        + ", ".join(f"{fmt(v, 1)} ms ({s} endpoints)" for s, v in cycle_ms.items())
        + f" at concurrency 1; cycles/s: ≈ {1000 / cycle_ms['0']:.1f} at concurrency 1 (1 ÷ that sum), {rate:.1f} at "
        f"concurrency {cfg.verbs_concurrency} (the driver runs every call on one worker thread).",
    ]
    rep.tables.append(t)
    size0, _, first = series[0]
    rep.headline(
        "driver p50 / p99 ms, concurrency 1: " + " / ".join(v.split(".", 1)[1] for v in HEADLINE_VERBS),
        ", ".join(
            f"{fmt(summarize(first[v]).median * 1000, 1)} / {fmt(summarize(first[v]).p99 * 1000, 1)}"
            for v in HEADLINE_VERBS
        ),
    )
    last_size, _, last = series[-1]
    ce = "NetworkDriver.CreateEndpoint"
    rep.headline(
        f"CreateEndpoint p50 ms with {size0} → {last_size} endpoints on the network",
        f"{fmt(summarize(first[ce]).median * 1000, 1)} → {fmt(summarize(last[ce]).median * 1000, 1)}",
    )
    slow = max(CYCLE, key=lambda v: summarize(first[v]).median)
    rep.headline(f"slowest verb (p50, {size0} endpoints)", f"{slow.split('.', 1)[1]} "
                 f"{fmt(summarize(first[slow]).median * 1000, 1)} ms")
