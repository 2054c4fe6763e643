from pathlib import Path

import pytest

from driver.config import SettingsError, load_settings, parse_endpoints


def test_endpoints_parse_comma_list() -> None:
    assert parse_endpoints("http://10.0.0.5:2379, https://etcd.example:2379/") == [
        "http://10.0.0.5:2379",
        "https://etcd.example:2379",
    ]


@pytest.mark.parametrize("bad", ["10.0.0.5:2379", "http://10.0.0.5", "ftp://a:1", "http://a:99999", "http://a:1/x"])
def test_malformed_endpoint_is_named(bad: str) -> None:
    with pytest.raises(SettingsError, match=r"--etcd-endpoints \(PYOVERLAY_ETCD_ENDPOINTS\): .*not an etcd client URL"):
        load_settings({"store": "etcd", "etcd_endpoints": bad})


def test_env_endpoints_are_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYOVERLAY_STORE", "etcd")
    monkeypatch.setenv("PYOVERLAY_ETCD_ENDPOINTS", "http://127.0.0.1:2379,http://127.0.0.1:22379")
    s = load_settings({})
    assert s.store == "etcd" and s.etcd_endpoints == ["http://127.0.0.1:2379", "http://127.0.0.1:22379"]


def test_etcd_store_needs_endpoints() -> None:
    with pytest.raises(SettingsError, match="store etcd needs etcd endpoints"):
        load_settings({"store": "etcd"})


def test_unreadable_tls_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=f"cannot read etcd TLS file {tmp_path}/ca.pem"):
        load_settings({"store": "etcd", "etcd_endpoints": "https://a:2379", "etcd_ca": tmp_path / "ca.pem"})


def test_cert_without_key_is_refused(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    with pytest.raises(SettingsError, match="both a client certificate and its key"):
        load_settings({"store": "etcd", "etcd_endpoints": "https://a:2379", "etcd_cert": tmp_path / "c.pem"})


def test_empty_env_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # a managed plugin passes every declared variable, "" when the user set none
    for name in ("ETCD_CA", "ETCD_CERT", "ETCD_KEY", "ADVERTISE_ADDR"):
        monkeypatch.setenv(f"PYOVERLAY_{name}", "")
    s = load_settings({})
    assert (s.etcd_ca, s.etcd_cert, s.etcd_key, s.advertise_addr) == (None, None, None, None)


@pytest.mark.parametrize(("field", "value"), [("host_ttl", 2), ("etcd_prefix", "pyoverlay"), ("vxlan_port", 0)])
def test_out_of_range_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(SettingsError, match=f"--{field.replace('_', '-')}"):
        load_settings({field: value})


def test_defaults_are_the_documented_ones() -> None:
    s = load_settings({})
    assert (s.store, s.etcd_prefix, s.host_ttl, s.vxlan_port) == ("local", "/pyoverlay", 15, 4789)


@pytest.mark.parametrize(
    ("field", "spec", "why"),
    [
        ("default_pools_v4", "10.200.0.0/13", "is not BASE/LEN:SIZE"),
        ("default_pools_v4", "10.200.0.0/13:12", "size /12 must be between /13 and /32"),
        ("default_pools_v4", "fd00::/48:64", "of IPv4"),
        ("default_pools_v6", "fd00::/48:200", "between /48 and /128"),
    ],
)
def test_bad_default_pool_specs_stop_the_driver_at_start(field: str, spec: str, why: str) -> None:
    with pytest.raises(SettingsError, match=why):
        load_settings({field: [spec]})
