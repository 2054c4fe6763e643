"""Clean up what a crashed (SIGKILLed) test session left: `python -m tests.lab.reap [--dry-run]`.

A session is stale when the process recorded in `/tmp/po-e2e-<token>/owner` is
gone. Only things carrying that token are touched: netns `po<token>*` (and the
processes inside them), container cgroups `/po-e2e-<token>-*`, mounts under the
base dir, the base dir itself.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import signal
import sys
from pathlib import Path

from .inspection import mounts_under, netns_list
from .lab import BASE_ROOT, OWNER_FILE
from .netns import Netns
from .proc import log, pids_in_namespace, process_start_time, run, signal_pids, terminate_pids, wait_pids

CGROUP_ROOT = Path("/sys/fs/cgroup")


def stale_sessions(root: Path = BASE_ROOT) -> list[Path]:
    stale = []
    for base in sorted(root.glob("po-e2e-*")):
        try:
            pid_s, start_s = (base / OWNER_FILE).read_text().split()
            alive = str(process_start_time(int(pid_s))) == start_s
        except (OSError, ValueError):
            alive = False  # no owner file: killed before it was written
        if not alive:
            stale.append(base)
    return stale


def _cgroup_dirs(token: str) -> list[Path]:
    pattern = f"po-e2e-{token}-*"
    dirs = list(CGROUP_ROOT.glob(pattern))
    for hier in CGROUP_ROOT.iterdir():
        if hier.is_dir() and not hier.is_symlink():
            dirs += hier.glob(pattern)
    return [d for d in dirs if d.is_dir()]


def reap(base: Path, dry_run: bool = False) -> None:
    token = base.name.removeprefix("po-e2e-")
    namespaces = [Netns(n) for n in netns_list(f"po{token}")]
    cgroups = _cgroup_dirs(token)
    mounts = mounts_under(base)
    log.warning("stale session %s: netns %s, cgroups %d, mounts %s", base, [n.name for n in namespaces],
                len(cgroups), mounts)  # fmt: skip
    if dry_run:
        return
    # Containers first (disposable; their PID 1 may ignore SIGTERM and make dockerd wait 10 s each),
    # then dockerd with SIGTERM so it stops its containerd, then whatever is left in our namespaces.
    container_pids = {int(x) for d in cgroups for f in d.rglob("cgroup.procs") for x in f.read_text().split()}
    signal_pids(container_pids, signal.SIGKILL)
    wait_pids(container_pids, 10.0)
    in_ns = [p for ns in namespaces for p in pids_in_namespace(ns.path)]
    terminate_pids(in_ns, 15.0, what="stale lab process")
    for ns in namespaces:
        ns.delete()
    for mp in sorted(mounts, key=len, reverse=True):
        run(["umount", "-l", mp], check=False)
    for d in cgroups:
        for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            sub.rmdir()
        d.rmdir()
    if mounts_under(base):
        log.error("mounts still under %s; not removing it", base)
    else:
        shutil.rmtree(base)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.lab.reap", description=__doc__)
    ap.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    ap.add_argument("--root", type=Path, default=BASE_ROOT)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    stale = stale_sessions(args.root)
    if not stale:
        print("no stale sessions")
    for base in stale:
        reap(base, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
