"""Driver memory with N endpoints: VmRSS and VmHWM of the driver process as real containers join."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from bench.config import Config
from bench.context import Bench, proc_status
from bench.report import Report, Table, fmt

log = logging.getLogger("bench")
PARALLEL = 4  # concurrent `docker run -d`: dockerd serialises the driver calls anyway


def _mb(kb: int) -> float:
    return kb / 1024


def run(b: Bench, cfg: Config, rep: Report) -> None:
    net = b.network("bench-rss")
    # A fresh driver process: the figure must not depend on which benchmarks ran before.
    b.drv.restart()
    time.sleep(1.0)
    pid = b.drv.pid
    if pid is None:
        raise RuntimeError("driver is not running after restart")
    rows: list[tuple[str, dict[str, int]]] = [("0 (fresh process)", proc_status(pid))]
    per_container: dict[str, float] = {}
    names: list[str] = []
    created_s = 0.0
    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            for target in cfg.rss_checkpoints:
                batch = [f"rss-{i:04d}" for i in range(len(names), target)]
                t0 = time.monotonic()
                list(pool.map(lambda n: b.run_container(n, net), batch))
                dt = time.monotonic() - t0
                created_s += dt
                per_container[str(target)] = dt / max(1, len(batch))
                names += batch
                rows.append((str(target), proc_status(pid)))
                log.info("rss: %d endpoints, VmRSS %.1f MB", target, _mb(rows[-1][1]["VmRSS"]))
    finally:
        t0 = time.monotonic()
        b.remove_containers(names)
        removed_s = time.monotonic() - t0
    rows.append(("0 (all removed again)", proc_status(pid)))

    base = rows[0][1]["VmRSS"]
    t = Table(
        "Driver memory (pyoverlay process)",
        ["endpoints", "VmRSS MB", "VmHWM MB", "Δ VmRSS vs fresh MB", "docker run -d s/container (batch)"],
    )
    for label, st in rows:
        secs = per_container.get(label)
        t.add(label, fmt(_mb(st["VmRSS"])), fmt(_mb(st["VmHWM"])), fmt(_mb(st["VmRSS"] - base)),
              "-" if secs is None else fmt(secs, 2))
    n = cfg.rss_checkpoints[-1]
    at = dict(rows)
    rep.raw["rss"] = {"unit": "kB", "rows": [{"endpoints": label, **st} for label, st in rows]}
    t.notes += [
        f"`docker run -d --network {net} bb sleep` containers ({PARALLEL} at a time) on a pyoverlay network "
        "(Docker's IPAM), driver restarted first; /proc/PID/status of the driver process; the last column is the "
        "wall time of the batch that reached that count divided by its size.",
        f"{n} containers created in {created_s:.1f}s, removed with one `docker rm -f` in {removed_s:.1f}s; "
        f"VmRSS from 1 to {n} endpoints: {_mb(at[str(n)]['VmRSS'] - at[str(cfg.rss_checkpoints[0])]['VmRSS']):+.1f} "
        "MB (CPython keeps freed memory, so the figure is a high-water mark, not a per-endpoint cost).",
    ]
    rep.tables.append(t)
    hwm = _mb(at[str(n)]["VmHWM"])
    rep.headline(f"driver VmHWM with {n} endpoints", f"{hwm:.1f} MB", "< 80 MB", hwm < 80)
