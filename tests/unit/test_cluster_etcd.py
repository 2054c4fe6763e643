"""EtcdStore's construction: validated settings, no connection, no blocking.

Nothing here opens a gRPC channel (the cluster tier needs to be gRPC's first user in
a pytest process, see tests/cluster/conftest.py); calls against etcd are in tests/cluster.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from driver.cluster.base import StoreUnavailable
from driver.cluster.etcd import EtcdStore, parse_endpoint


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("http://127.0.0.1:2379", "127.0.0.1:2379"),
        ("https://etcd-1.example:12379/", "etcd-1.example:12379"),
        ("http://[fd00::1]:2379", "[fd00::1]:2379"),
    ],
)
def test_endpoint_syntax(url: str, target: str) -> None:
    assert parse_endpoint(url)[1] == target


@pytest.mark.parametrize(
    "bad",
    ["127.0.0.1:2379", "http://127.0.0.1", "ftp://h:1", "http://h:99999", "http://u:p@h:1", "http://h:1/v3", "http://:1"],
)
def test_malformed_endpoint_is_named(bad: str) -> None:
    with pytest.raises(ValueError, match="etcd endpoint") as e:
        EtcdStore(["http://127.0.0.1:2379", bad])
    assert repr(bad) in str(e.value)


def test_settings_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no etcd endpoints"):
        EtcdStore([])
    with pytest.raises(ValueError, match="mix"):
        EtcdStore(["http://a:1", "https://b:1"])
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match=str(missing)):
        EtcdStore(["https://a:1"], ca=missing)
    with pytest.raises(ValueError, match="both"):
        EtcdStore(["https://a:1"], cert=tmp_path / "c.pem")


def test_construction_never_connects_and_close_is_clean() -> None:
    before = threading.active_count()
    t = time.monotonic()
    s = EtcdStore(["http://192.0.2.1:2379", "http://etcd.invalid:2379"])  # unroutable, unresolvable
    assert time.monotonic() - t < 0.2
    s.close()
    s.close()
    assert threading.active_count() == before  # the loop thread is gone
    with pytest.raises(StoreUnavailable, match=r"etcd at http://192\.0\.2\.1:2379,.*closed"):
        s.get("k")
