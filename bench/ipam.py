"""`python -m bench.ipam`: RequestAddress + ReleaseAddress cost as a /16 fills (no lab, no dockerd).

The IPAM service runs in-process on a ``LocalStore`` in a temporary directory, so every
call pays its real JSON and fsync cost. The pool is filled through the same API with
fsync switched off (filling is not what is measured, and 60 k fsyncs take minutes), then
at each checkpoint one round is a dynamic RequestAddress followed by its ReleaseAddress,
fsync on. Only public ``IpamService`` calls are used, so the script also runs against an
older tree: ``cd /tmp && PYTHONPATH=<old checkout>:<this checkout> python -m bench.ipam``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock
from urllib.parse import quote

import driver
from driver.ipam.service import LOCAL_SPACE, IpamService
from driver.state import Repo
from driver.store.local import LocalStore

POOL = "10.0.0.0/16"


def _service(root: Path) -> IpamService:
    return IpamService(Repo(LocalStore(root)), ["10.200.0.0/16:24"], ["fd70::/48:64"], lambda: [])


def _fill(ipam: IpamService, pool_id: str, count: int) -> None:
    with mock.patch.object(os, "fsync", lambda fd: None):
        for _ in range(count):
            ipam.request_address(pool_id, "", {})
    # Write the fill back now, or the first measured fsyncs would pay for it (ext4 commits
    # the whole journal).
    os.sync()


def _round(ipam: IpamService, pool_id: str) -> float:
    t0 = time.perf_counter()
    cidr = ipam.request_address(pool_id, "", {})
    ipam.release_address(pool_id, cidr.split("/")[0])
    return time.perf_counter() - t0


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _row(root: Path, ipam: IpamService, pool_id: str, held: int, rounds: int) -> tuple[float, str]:
    """The median round in ms, and the table row."""
    samples = sorted(_round(ipam, pool_id) for _ in range(rounds))
    record = ipam.repo.store.get(f"pool/{quote(pool_id, safe='')}") or b""
    # A restarted driver: read the store, then the first request (which loads the pool).
    restart = _timed(lambda: _service(root).request_address(pool_id, "10.0.255.254", {}))
    _service(root).release_address(pool_id, "10.0.255.254")
    ms = 1000 * statistics.median(samples), 1000 * samples[int(0.9 * (len(samples) - 1))]
    return ms[0], f"| {held} | {ms[0]:.3f} | {ms[1]:.3f} | {len(record)} | {1000 * restart:.0f} |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ipam", description=__doc__.splitlines()[0])
    p.add_argument("--held", default="10,1000,10000,60000", help="checkpoints: addresses held (default %(default)s)")
    p.add_argument("--rounds", type=int, default=200, help="request+release rounds per checkpoint")
    p.add_argument("--dir", type=Path, help="parent of the temporary state directory (default: $TMPDIR)")
    args = p.parse_args(argv)
    checkpoints = sorted(int(n) for n in args.held.split(","))
    print(f"driver tree: {Path(driver.__file__).parent}, pool {POOL}, {args.rounds} rounds per checkpoint\n")
    print("| addresses held | request+release median ms | p90 ms | pool record bytes | restart + first request ms |")
    print("|---|---|---|---|---|")
    medians: dict[int, float] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        ipam = _service(root)
        pool_id = ipam.request_pool(LOCAL_SPACE, POOL, "", {}, False).id
        held = 0
        for target in checkpoints:
            _fill(ipam, pool_id, target - held)
            held = target
            medians[held], row = _row(root, ipam, pool_id, held, args.rounds)
            print(row, flush=True)
    lo, hi = checkpoints[0], checkpoints[-1]
    print(f"\nmedian at {hi} held / median at {lo} held: {medians[hi] / medians[lo]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
