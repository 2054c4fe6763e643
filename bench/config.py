"""How many repetitions: the full run (about 10 minutes on 2 cores) and `--quick` (a smoke run)."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Config:
    latency_warmup: int = 2  # per variant, discarded
    latency_reps: int = 24  # per variant, interleaved
    iperf_seconds: int = 5
    iperf_warmup_seconds: int = 1
    throughput_reps: int = 7
    macvlan_reps: int = 9  # four paths a round, two ratios: the noisiest figures
    ports_reps: int = 7
    rss_checkpoints: tuple[int, ...] = (1, 10, 50, 100)
    verbs_warmup: int = 10
    verbs_cycles: int = 200  # at concurrency 1 on an empty network
    verbs_concurrency: int = 32
    verbs_concurrent_cycles: int = 96  # at verbs_concurrency, empty network
    verbs_background: int = 100  # endpoints that exist while the last series runs
    verbs_background_cycles: int = 40  # at concurrency 1 (slow: CreateEndpoint grows with the links)
    # `overlay` (its own multi-host lab; bench/overlay.py). Throughput uses iperf_* and throughput_reps.
    overlay_kinds: tuple[str, ...] = ("20.10", "20.10")  # hosts A and B (swarm needs the same engine, see there)
    convergence_sizes: tuple[int, ...] = (1, 10, 100)  # endpoints already on the network
    convergence_samples: int = 20  # per size, after convergence_warmup discarded
    convergence_warmup: int = 2
    poll_interval: float = 0.003  # seconds between netlink dumps on host B
    etcd_starts: int = 10  # container starts (and removals) per counting round
    etcd_rounds: int = 3
    rss_remote: int = 100  # remote endpoints for the RSS comparison
    rss_reps: int = 3
    resync_endpoints: int = 1000
    resync_reps: int = 3
    overlay_parts: tuple[str, ...] = ("throughput", "etcd", "convergence", "rss", "resync")


FULL = Config()
QUICK = Config(
    latency_warmup=1, latency_reps=3, iperf_seconds=1, throughput_reps=1, macvlan_reps=1, ports_reps=1,
    rss_checkpoints=(1, 10), verbs_warmup=2, verbs_cycles=20, verbs_concurrent_cycles=64, verbs_background=20,
    verbs_background_cycles=10, convergence_sizes=(1, 10), convergence_samples=5, convergence_warmup=1, etcd_starts=3,
    etcd_rounds=1, rss_remote=20, rss_reps=1, resync_endpoints=200, resync_reps=1,
)


def with_endpoints(cfg: Config, n: int) -> Config:
    """`--endpoints N`: the RSS series ends at N endpoints."""
    points = (*(p for p in cfg.rss_checkpoints if p < n), n)
    return replace(cfg, rss_checkpoints=points)
