"""EtcdStore over TLS with client certificates (etcd --client-cert-auth)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from driver.cluster.base import StoreUnavailable
from driver.cluster.etcd import EtcdStore
from tests.cluster.conftest import etcd_cluster, fresh_prefix
from tests.lab import EtcdCluster, Netns

Tls = tuple[Path, Path, Path]


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _issue(d: Path, name: str, ext: str) -> tuple[Path, Path]:
    key, csr, pem, extfile = (d / f"{name}.{s}" for s in ("key", "csr", "pem", "ext"))
    extfile.write_text(ext)
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
             "-CAcreateserial", "-days", "1", "-out", str(pem), "-extfile", str(extfile))  # fmt: skip
    return pem, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tls]:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-subj", "/CN=po-test-ca")  # fmt: skip
    # etcd dials its own client URL (gateway) with its server certificate, so clientAuth too.
    server = _issue(d, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
    client = _issue(d, "client", "extendedKeyUsage=clientAuth\n")
    ca = d / "ca.pem"
    return {"server": (ca, *server), "client": (ca, *client)}


@pytest.fixture(scope="module")
def cluster(cluster_ns: Netns, pki: dict[str, Tls]) -> Iterator[EtcdCluster]:
    with etcd_cluster(cluster_ns, 32379, 32380, size=1, client_tls=pki["server"]) as c:
        yield c


def test_tls_with_client_certificate(cluster: EtcdCluster, pki: dict[str, Tls]) -> None:
    ca, cert, key = pki["client"]
    assert cluster.endpoints[0].startswith("https://")
    s = EtcdStore(cluster.endpoints, prefix=fresh_prefix(), timeout=2.0, ca=ca, cert=cert, key=key)
    try:
        assert s.create("k", b"v")
        assert s.get("k") is not None
        _, rev = s.range("")
        w = s.watch("", rev + 1)
        s.delete("k")
        assert next(iter(w)).events[0].entry is None
        w.cancel()
    finally:
        s.close()


@pytest.mark.parametrize("how", ["no client certificate", "plaintext"])
def test_refused_handshake_is_unavailable(cluster: EtcdCluster, pki: dict[str, Tls], how: str) -> None:
    ca = pki["client"][0]
    if how == "plaintext":
        s = EtcdStore([cluster.endpoints[0].replace("https", "http")], timeout=2.0)
    else:
        s = EtcdStore(cluster.endpoints, timeout=2.0, ca=ca)
    try:
        t = time.monotonic()
        with pytest.raises(StoreUnavailable, match="etcd at http"):
            s.get("k")
        assert time.monotonic() - t < 4.0
    finally:
        s.close()
