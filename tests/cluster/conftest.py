"""The cluster tier: EtcdStore against real etcd 3.4 members in a throwaway netns.

etcd listens only inside that netns (127.0.0.1 there), so the test process itself
enters it for the session: the store's loop thread, and the gRPC threads it starts,
are created from the main thread while it is in the netns and so live there too. The
main thread goes back to its own netns at the end. This tier must therefore be the
first user of gRPC in the pytest process (no unit test opens an etcd channel).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.lab import EtcdCluster, Netns

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_names = itertools.count()


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def entered(ns: Netns) -> Iterator[None]:
    """Run the calling thread (and the threads it starts) in ``ns``."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(ns.path, os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


@pytest.fixture(scope="session")
def cluster_ns() -> Iterator[Netns]:
    ns = Netns(f"poc{os.getpid() % 100000}").create()
    try:
        with entered(ns):
            yield ns
    finally:
        ns.delete()


@contextmanager
def etcd_cluster(
    ns: Netns, client_port: int, peer_port: int, size: int = 3, client_tls: tuple[Path, Path, Path] | None = None
) -> Iterator[EtcdCluster]:
    """``size`` members on 127.0.0.1 of ``ns``; data on tmpfs (fsync on a shared disk
    stalls heartbeats and causes elections nobody asked for)."""
    workdir = Path(tempfile.mkdtemp(prefix="po-etcd-", dir="/dev/shm"))
    members = [(ns, "127.0.0.1")] * size
    cluster = EtcdCluster(members, workdir, client_port, peer_port, name=f"po-e{next(_names)}-", client_tls=client_tls)
    try:
        with cluster:
            yield cluster
    finally:
        cluster.teardown()
        for log in workdir.glob("*.log"):
            log.unlink()
        workdir.rmdir()


def fresh_prefix() -> str:
    return f"/pyoverlay-test/{os.getpid()}-{next(_names)}"
