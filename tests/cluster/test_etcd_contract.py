"""The cluster store contract against EtcdStore on a real 3-member etcd cluster."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from driver.cluster.etcd import EtcdStore
from tests.cluster.conftest import etcd_cluster, fresh_prefix
from tests.cluster.contract import ClusterContract, Ctx
from tests.lab import EtcdCluster, Netns


@pytest.fixture(scope="module")
def cluster(cluster_ns: Netns) -> Iterator[EtcdCluster]:
    with etcd_cluster(cluster_ns, 12379, 12380) as c:
        yield c


class TestEtcdContract(ClusterContract):
    @pytest.fixture
    def h(self, cluster: EtcdCluster) -> Iterator[Ctx]:
        store = EtcdStore(cluster.endpoints, prefix=fresh_prefix(), timeout=3.0, progress_interval=1.0)
        try:
            yield Ctx(store, time.sleep)
        finally:
            store.close()


def test_keys_live_under_the_prefix(cluster: EtcdCluster) -> None:
    prefix = fresh_prefix()
    with_slash = EtcdStore(cluster.endpoints, prefix=prefix + "/")
    plain = EtcdStore(cluster.endpoints, prefix=prefix)
    outside = EtcdStore(cluster.endpoints, prefix=prefix + "-other")
    try:
        assert plain.create("net/a", b"1")
        assert with_slash.get("net/a") is not None  # one separator either way
        assert outside.range("")[0] == {}
        out = cluster.members[0].ns.run(
            "etcdctl", f"--endpoints={cluster.endpoints[0]}", "get", "--prefix", "--keys-only", prefix
        ).stdout.split()
        assert out == [f"{prefix}/net/a"]
    finally:
        for s in (with_slash, plain, outside):
            s.close()
