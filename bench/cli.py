"""`scripts/bench [BENCHMARK ...] [--only LIST] [--engine 28.5|20.10] [--quick]`: run, print markdown, tear down.

`scripts/bench overlay [--parts ...]` is the multi-host overlay benchmark (bench/overlay.py): its own lab
(several dockerds, etcd), so it runs on its own and is not part of the default set.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType

from bench import latency, macvlan, overlay, ports, rss, throughput, verbs
from bench.config import FULL, QUICK, Config, with_endpoints
from bench.context import Bench
from bench.report import Report

log = logging.getLogger("bench")

Benchmark = Callable[[Bench, Config, Report], None]
BENCHMARKS: dict[str, Benchmark] = {
    "run-latency": latency.run,
    "throughput": throughput.run,
    "macvlan": macvlan.run,
    "rss": rss.run,
    "verbs": verbs.run,
    "ports": ports.run,
}
OVERLAY = "overlay"  # not in BENCHMARKS: a lab of its own (bench/overlay.py), run alone
ALIASES = {"latency": "run-latency", "memory": "rss", "published": "ports", "multihost": OVERLAY}
# Environment that changes what runs, shown in the report's command line when set.
ENV_SHOWN = ("PYOVERLAY_VENV", "PYOVERLAY_E2E_DRIVER", "PYOVERLAY_E2E_DOCKER_CLI", "PYOVERLAY_E2E_CACHE")
TOOLS = ("iperf3", "nsenter", "unshare", "ip", "iptables", "/usr/sbin/dockerd")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=os.environ.get("BENCH_PROG", "python -m bench"),
        description="pyoverlay vs Docker's built-in drivers, side by side in one throwaway lab "
        "(one dockerd in its own namespaces); prints a markdown report on stdout, progress on stderr.",
    )
    p.add_argument("benchmarks", nargs="*", metavar="BENCHMARK", help=f"what to run (default: all of "
                   f"{', '.join(BENCHMARKS)}); or `{OVERLAY}` alone (multi-host, its own lab)")
    p.add_argument("--only", action="append", default=[], metavar="LIST", help="comma-separated benchmark names")
    p.add_argument("--engine", choices=("28.5", "20.10"), default="28.5", help="dockerd version (default 28.5)")
    p.add_argument("--quick", action="store_true", help="a smoke run: few repetitions, 1-second iperf3 runs")
    p.add_argument("--endpoints", type=int, metavar="N", help="endpoints at the end of the RSS series (default 100)")
    p.add_argument("-o", "--output", type=Path, metavar="FILE", help="also write the report to FILE")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every sample to FILE (JSON)")
    p.add_argument("--keep-logs", type=Path, metavar="DIR", help="keep the dockerd and driver logs in DIR")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (lab commands)")
    o = p.add_argument_group(f"{OVERLAY} (multi-host) options")
    o.add_argument("--parts", metavar="LIST", help=f"comma-separated, in this order: {', '.join(overlay.PARTS)} "
                   "(default all)")
    o.add_argument("--kinds", metavar="A,B", help="engines of hosts A and B (default 20.10,20.10: swarm does not "
                   "attach on 28.5 in this lab)")
    o.add_argument("--driver-rev", metavar="REV", help="run the driver of this commit (`git archive`) instead of a "
                   "copy of the work tree")
    o.add_argument("--reps", type=int, metavar="N", help="throughput rounds (default 7)")
    o.add_argument("--iperf-seconds", type=int, metavar="S", help="length of each iperf3 run (default 5)")
    o.add_argument("--sizes", metavar="LIST", help="convergence: endpoints already on the network (default 1,10,100)")
    o.add_argument("--samples", type=int, metavar="N", help="convergence samples per size (default 20)")
    o.add_argument("--poll-ms", type=float, metavar="MS", help="convergence poll interval on host B (default 3)")
    o.add_argument("--etcd-starts", type=int, metavar="N", help="container starts per etcd counting round (10)")
    o.add_argument("--etcd-rounds", type=int, metavar="N", help="etcd counting rounds (default 3)")
    o.add_argument("--rss-remote", type=int, metavar="N", help="remote endpoints for the RSS figure (default 100)")
    o.add_argument("--rss-reps", type=int, metavar="N", help="RSS rounds (default 3)")
    o.add_argument("--resync-endpoints", type=int, metavar="N", help="remote endpoints to resync (default 1000)")
    o.add_argument("--resync-reps", type=int, metavar="N", help="resync rounds (default 3)")
    return p


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def overlay_config(cfg: Config, args: argparse.Namespace, p: argparse.ArgumentParser) -> Config:
    """The overlay flags applied to `cfg`."""
    changes: dict[str, object] = {}
    if args.parts:
        parts = [x for x in args.parts.split(",") if x]
        unknown = [x for x in parts if x not in overlay.PARTS]
        if unknown:
            p.error(f"unknown overlay part(s) {', '.join(unknown)}; choose from {', '.join(overlay.PARTS)}")
        changes["overlay_parts"] = tuple(x for x in overlay.PARTS if x in parts)
    if args.kinds:
        kinds = tuple(args.kinds.split(","))
        if len(kinds) != 2 or not set(kinds) <= {"20.10", "28.5"}:
            p.error("--kinds: two of 20.10 and 28.5, e.g. 20.10,20.10")
        changes["overlay_kinds"] = kinds
    if args.sizes:
        changes["convergence_sizes"] = _ints(args.sizes)
    if args.poll_ms:
        changes["poll_interval"] = args.poll_ms / 1000
    for flag, name in (("reps", "throughput_reps"), ("iperf_seconds", "iperf_seconds"),
                       ("samples", "convergence_samples"), ("etcd_starts", "etcd_starts"),
                       ("etcd_rounds", "etcd_rounds"), ("rss_remote", "rss_remote"), ("rss_reps", "rss_reps"),
                       ("resync_endpoints", "resync_endpoints"), ("resync_reps", "resync_reps")):  # fmt: skip
        value = getattr(args, flag)
        if value is not None:
            if value < 1:
                p.error(f"--{flag.replace('_', '-')} must be at least 1")
            changes[name] = value
    return replace(cfg, **changes)  # type: ignore[arg-type]


def selected(args: argparse.Namespace, p: argparse.ArgumentParser) -> list[str]:
    names = list(args.benchmarks) + [n for item in args.only for n in item.split(",") if n]
    names = [ALIASES.get(n, n) for n in names]
    if OVERLAY in names:
        if set(names) != {OVERLAY}:
            p.error(f"{OVERLAY} builds a multi-host lab of its own: run it alone (scripts/bench {OVERLAY})")
        return [OVERLAY]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    # The canonical order, whatever order they were named in.
    return [n for n in BENCHMARKS if n in names] or list(BENCHMARKS)


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the teardown like Ctrl-C


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _run_all(bench: Bench, cfg: Config, rep: Report, names: list[str], durations: list[str]) -> int | str | None:
    """Run the benchmarks in order; one failing does not stop the others, an interrupt does (its exit code)."""
    for name in names:
        t0 = time.monotonic()
        log.info("=== %s", name)
        try:
            BENCHMARKS[name](bench, cfg, rep)
        except Exception as err:
            log.exception("%s failed", name)
            rep.errors.append(f"{name}: {type(err).__name__}: {err}")
        except (KeyboardInterrupt, SystemExit) as err:
            rep.errors.append(f"{name}: interrupted; the report is partial")
            return 130 if isinstance(err, KeyboardInterrupt) else err.code
        finally:
            durations.append(f"{name} {time.monotonic() - t0:.0f}s")
    return None


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    names = selected(args, p)
    logging.basicConfig(
        stream=sys.stderr, level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if os.geteuid() != 0:
        print(f"{p.prog}: run as root (the lab creates network and mount namespaces)", file=sys.stderr)
        return 2
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        print(f"{p.prog}: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.keep_logs:
        os.environ["PYOVERLAY_E2E_KEEP_LOGS"] = str(args.keep_logs.resolve())
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    cfg = QUICK if args.quick else FULL
    if args.endpoints:
        cfg = with_endpoints(cfg, args.endpoints)

    env = [f"{k}={shlex.quote(os.environ[k])}" for k in ENV_SHOWN if k in os.environ]
    rep = Report(" ".join([*env, shlex.join([p.prog, *(sys.argv[1:] if argv is None else argv)])]))
    started, load0 = time.monotonic(), _load()
    durations: list[str] = []
    code: int | str | None = None
    if names == [OVERLAY]:
        rep.title = "pyoverlay overlay benchmark (multi-host)"
        code, teardown_errors = overlay.run_all(overlay_config(cfg, args, p), rep, durations, args.driver_rev)
        rep.context.append(("mode", "quick (smoke run: too few repetitions to quote)" if args.quick else "full"))
        return _finish(args, rep, code=code, teardown_errors=teardown_errors, started=started, load0=load0,
                       durations=durations)
    bench = Bench(args.engine)
    with bench:
        rep.context += [
            ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
            ("engine", f"dockerd {bench.version()} in a lab netns (docker CLI "
                       f"{bench.docker('version', '--format', '{{.Client.Version}}').stdout.strip()})"),
            ("driver", f"pyoverlay {bench.revision}, log level info, Python {platform.python_version()}"),
            ("machine", f"{os.cpu_count()} CPUs, kernel {platform.release()}"),
            ("mode", "quick (smoke run: too few repetitions to quote)" if args.quick else "full"),
        ]
        code = _run_all(bench, cfg, rep, names, durations)
        log.info("tearing the lab down")
    return _finish(args, rep, code=code, teardown_errors=bench.teardown_errors, started=started, load0=load0,
                   durations=durations)


def _finish(
    args: argparse.Namespace, rep: Report, *, code: int | str | None, teardown_errors: list[str], started: float,
    load0: str, durations: list[str],
) -> int:
    """Context, render, write; the exit code."""
    rep.errors += teardown_errors
    if not teardown_errors:
        log.info("lab torn down, nothing left behind")
    rep.context += [
        ("load average (1/5/15 min)", f"{load0} before, {_load()} after (other work on the machine skews "
                                      "absolute numbers; ratios are taken within one run)"),
        ("wall time", f"{time.monotonic() - started:.0f}s ({', '.join(durations)}, rest: lab start and teardown)"),
    ]
    text = rep.render()
    sys.stdout.write(text)
    if args.output:
        args.output.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"command": rep.command, "context": dict(rep.context), **rep.raw}, indent=1))
    if code is not None:
        return code if isinstance(code, int) else 1
    return 1 if rep.errors else 0
