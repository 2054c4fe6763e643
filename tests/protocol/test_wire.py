"""The wire contract: dockerd's framing, the {"Err"} contract, bad input changing nothing."""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

import pytest

from tests.plugin import ACCEPT, Plugin

NID = "1" * 64
EID = "2" * 64
NET = {
    "NetworkID": NID,
    "Options": {"com.docker.network.enable_ipv6": False, "com.docker.network.generic": {}},
    "IPv4Data": [{"AddressSpace": "LocalDefault", "Gateway": "10.60.0.1/24", "Pool": "10.60.0.0/24"}],
    "IPv6Data": [],
}


def net(**generic: str) -> dict[str, Any]:
    body = json.loads(json.dumps(NET))
    body["Options"]["com.docker.network.generic"] = generic
    return body


@pytest.mark.parametrize(
    "verb", ["Plugin.Activate", "NetworkDriver.GetCapabilities", "IpamDriver.GetCapabilities",
             "IpamDriver.GetDefaultAddressSpaces"],
)
def test_argumentless_verbs_take_an_empty_body(shared_plugin: Plugin, verb: str) -> None:
    r = shared_plugin.raw(verb, b"")
    assert r.status_code == 200 and r.json()


def test_unknown_verb_is_404_with_err(shared_plugin: Plugin) -> None:
    r = shared_plugin.raw("NetworkDriver.Frobnicate", b"{}")
    assert r.status_code == 404 and "Err" in r.json() and "detail" not in r.json()
    r = shared_plugin.client.get("/Plugin.Activate", headers={"Host": ""})
    assert r.status_code == 405 and "Err" in r.json()


@pytest.mark.parametrize(
    ("verb", "raw", "message"),
    [
        ("NetworkDriver.CreateNetwork", b"", "empty request body"),
        ("NetworkDriver.CreateNetwork", b"{not json", "malformed JSON"),
        ("NetworkDriver.CreateNetwork", b"[]", "body must be a JSON object"),
        ("NetworkDriver.Join", b'{"NetworkID": "ab"}', "EndpointID: Field required"),
        ("NetworkDriver.CreateEndpoint", b'{"NetworkID": 7, "EndpointID": "ab"}', "NetworkID: Input should be a"),
        ("NetworkDriver.DeleteNetwork", b'{"NetworkID": "../../etc/passwd"}', "NetworkID: must be an ID"),
        ("IpamDriver.RequestPool", b'{"Pool": "10.0.0.0/8", "V6": "no"}', "V6: Input should be a valid boolean"),
        ("IpamDriver.RequestAddress", b"", "empty request body"),
        ("IpamDriver.ReleasePool", b"{}", "PoolID: Field required"),
    ],
)
def test_malformed_requests_get_400_err(shared_plugin: Plugin, verb: str, raw: bytes, message: str) -> None:
    before = shared_plugin.snapshot()
    r = shared_plugin.raw(verb, raw)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"Err"} and message in r.json()["Err"]
    assert shared_plugin.snapshot() == before


BAD_NETWORKS = [
    (net(mode="vxlan2"), "option mode: unknown mode 'vxlan2'"),
    (net(**{"com.docker.network.bridge.name": "br0;reboot"}), "is not a valid interface name"),
    (net(**{"com.docker.network.bridge.name": "a-very-long-bridge-name"}), "is not a valid interface name"),
    (net(**{"com.docker.network.bridge.name": "../../x"}), "is not a valid interface name"),
    (net(**{"com.docker.network.driver.mtu": "9x"}), "option com.docker.network.driver.mtu: '9x' is not an integer"),
    (net(**{"com.docker.network.driver.mtu": "65536"}), "out of range 68-65535"),
    (net(**{"com.docker.network.container_iface_prefix": "$(id)"}), "not a valid prefix"),
    (net(**{"com.docker.network.bridge.enable_icc": "maybe"}), "is not a boolean"),
    ({**NET, "IPv4Data": [{"Pool": "10.60.0.0/33", "Gateway": "10.60.0.1/24"}]}, "IPv4Data[0].Pool: '10.60.0.0/33'"),
    ({**NET, "IPv4Data": [{"Pool": "10.60.0.0/24", "Gateway": "10.61.0.1/24"}]},
     "IPv4Data[0].Gateway: 10.61.0.1 is outside pool 10.60.0.0/24"),
    ({**NET, "IPv4Data": [{"Pool": "fd00::/64"}]}, "IPv4Data[0].Pool: 'fd00::/64' is not an IPv4 subnet"),
    ({**NET, "IPv4Data": [{"Pool": "10.60.0.0/24", "AuxAddresses": {"a": "nope"}}]},
     "IPv4Data[0].AuxAddresses.a: 'nope' is not an IP address"),
    ({**NET, "Options": {"com.docker.network.enable_ipv6": "yes"}}, "Options.com.docker.network.enable_ipv6"),
    ({**NET, "Options": {"com.docker.network.generic": {"com.docker.network.driver.mtu": 1400}}},
     "value must be a string"),
]


@pytest.mark.parametrize(("body", "message"), BAD_NETWORKS)
def test_bad_network_options_change_nothing(shared_plugin: Plugin, body: dict[str, Any], message: str) -> None:
    before = shared_plugin.snapshot()
    err = shared_plugin.err("NetworkDriver.CreateNetwork", body, status=400)
    assert message in err
    assert shared_plugin.snapshot() == before


def test_bad_endpoint_requests_change_nothing(shared_plugin: Plugin) -> None:
    shared_plugin.ok("NetworkDriver.CreateNetwork", NET)
    try:
        before = shared_plugin.snapshot()
        cases = [
            ({"Address": "10.60.0.5"}, "Interface.Address: '10.60.0.5' has no prefix length"),
            ({"Address": "10.99.0.5/24"}, "Interface.Address: 10.99.0.5/24 is in none of the network's subnets"),
            ({"Address": "10.60.0.5/24", "MacAddress": "01:00:5e:00:00:01"}, "is a multicast MAC"),
            ({"Address": "10.60.0.5/24", "MacAddress": "nope"}, "Interface.MacAddress: 'nope' is not a MAC"),
        ]
        for iface, message in cases:
            err = shared_plugin.err(
                "NetworkDriver.CreateEndpoint", {"NetworkID": NID, "EndpointID": EID, "Interface": iface}, 400
            )
            assert message in err
        unknown = {"NetworkID": "9" * 64, "EndpointID": EID, "Interface": {}}
        assert "NetworkID: network 999999999999 is not known" in shared_plugin.err(
            "NetworkDriver.CreateEndpoint", unknown, 400
        )
        assert "EndpointID: endpoint" in shared_plugin.err("NetworkDriver.Join", {"NetworkID": NID, "EndpointID": EID})
        assert shared_plugin.snapshot() == before
    finally:
        shared_plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NID})


def test_teardown_verbs_succeed_for_unknown_ids(shared_plugin: Plugin) -> None:
    ids = {"NetworkID": "a" * 64, "EndpointID": "b" * 64}
    for verb in ("Leave", "DeleteEndpoint", "RevokeExternalConnectivity", "DeleteNetwork", "EndpointOperInfo"):
        body = ids if verb != "DeleteNetwork" else {"NetworkID": ids["NetworkID"]}
        shared_plugin.ok(f"NetworkDriver.{verb}", body)
    shared_plugin.ok("IpamDriver.ReleaseAddress", {"PoolID": "PyoverlayLocal/10.1.0.0/24", "Address": "10.1.0.3"})
    shared_plugin.ok("IpamDriver.ReleasePool", {"PoolID": "PyoverlayLocal/10.1.0.0/24"})


def test_ipam_errors_are_non_200_err(shared_plugin: Plugin) -> None:
    pool = shared_plugin.ok("IpamDriver.RequestPool", {"AddressSpace": "PyoverlayLocal", "Pool": "10.62.0.0/30"})
    try:
        assert pool == {"PoolID": "PyoverlayLocal/10.62.0.0/30", "Pool": "10.62.0.0/30", "Data": {}}
        wider = {"AddressSpace": "PyoverlayLocal", "Pool": "10.62.0.0/24"}
        overlap = shared_plugin.err("IpamDriver.RequestPool", wider)
        assert "Pool: 10.62.0.0/24 overlaps pool 10.62.0.0/30" in overlap
        req = {"PoolID": pool["PoolID"], "Address": "", "Options": None}
        assert shared_plugin.ok("IpamDriver.RequestAddress", req)["Address"] == "10.62.0.1/30"
        assert shared_plugin.ok("IpamDriver.RequestAddress", req)["Address"] == "10.62.0.2/30"
        assert "no free address left" in shared_plugin.err("IpamDriver.RequestAddress", req, 409)
        taken = {**req, "Address": "10.62.0.2"}
        assert "Address: 10.62.0.2 is already allocated" in shared_plugin.err("IpamDriver.RequestAddress", taken, 409)
        outside = {**req, "Address": "10.63.0.2"}
        assert "outside pool" in shared_plugin.err("IpamDriver.RequestAddress", outside, 400)
        unknown = {**req, "PoolID": "PyoverlayLocal/10.9.0.0/24"}
        assert "PoolID: unknown pool" in shared_plugin.err("IpamDriver.RequestAddress", unknown, 400)
    finally:
        shared_plugin.ok("IpamDriver.ReleasePool", {"PoolID": "PyoverlayLocal/10.62.0.0/30"})


BAD_PORTMAPS = [
    ([{"Proto": 3, "Port": 80, "HostPort": 8080}], "portmap[0].Proto: unknown protocol number 3"),
    ([{"Proto": 6, "Port": 0, "HostPort": 8080}], "portmap[0].Port: 0 is not a number in 1-65535"),
    ([{"Proto": 6, "Port": 80, "HostPort": 70000}], "portmap[0].HostPort: 70000 is not a number in 0-65535"),
    ([{"Proto": 6, "Port": 80, "HostPort": 9005, "HostPortEnd": 9000}], "HostPortEnd: 9000 is below HostPort 9005"),
    ([{"Proto": 6, "Port": "80"}], "portmap[0].Port: '80' is not a number"),
    ([{"Proto": 17, "Port": 53, "HostIP": "localhost"}], "portmap[0].HostIP: 'localhost' is not an IP address"),
    ({"Proto": 6}, "must be a list of objects"),
]


@pytest.mark.parametrize(("portmap", "message"), BAD_PORTMAPS)
def test_bad_port_maps_are_refused_before_anything_changes(
    shared_plugin: Plugin, portmap: object, message: str
) -> None:
    shared_plugin.ok("NetworkDriver.CreateNetwork", NET)
    try:
        before = shared_plugin.snapshot()
        body = {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.60.0.5/24"},
                "Options": {"com.docker.network.portmap": portmap}}
        assert message in shared_plugin.err("NetworkDriver.CreateEndpoint", body, 400)
        assert shared_plugin.snapshot() == before
        ok = {**body, "Options": {}}
        shared_plugin.ok("NetworkDriver.CreateEndpoint", ok)
        before = shared_plugin.snapshot()
        program = {"NetworkID": NID, "EndpointID": EID, "Options": {"com.docker.network.portmap": portmap}}
        assert message in shared_plugin.err("NetworkDriver.ProgramExternalConnectivity", program, 400)
        assert shared_plugin.snapshot() == before
    finally:
        shared_plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NID})


def test_bad_exposed_ports_are_refused(shared_plugin: Plugin) -> None:
    shared_plugin.ok("NetworkDriver.CreateNetwork", NET)
    try:
        body = {"NetworkID": NID, "EndpointID": EID, "Interface": {"Address": "10.60.0.5/24"},
                "Options": {"com.docker.network.endpoint.exposedports": [{"Proto": 99, "Port": 1}]}}
        assert "exposedports[0].Proto: unknown protocol number 99" in shared_plugin.err(
            "NetworkDriver.CreateEndpoint", body, 400
        )
    finally:
        shared_plugin.ok("NetworkDriver.DeleteNetwork", {"NetworkID": NID})


def raw_exchange(p: Plugin, data: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """``data`` as is over a fresh connection: status, headers, body, and whatever the
    server sent after the answer before closing (must be nothing)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(p.driver.socket_path))
        s.sendall(data)
        resp = http.client.HTTPResponse(s, method="POST")
        resp.begin()
        body = resp.read()
        rest = resp.fp.read() if resp.fp is not None else b""
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, rest


HEAD = b"POST /Plugin.Activate HTTP/1.1\r\nHost: \r\n"
BROKEN_FRAMING = [
    pytest.param(b"\x00\x01 garbage\r\n\r\n", "illegal request line", id="garbage-request-line"),
    pytest.param(b"POST /Plugin.Activate HTTP/9\r\n\r\n", "illegal request line", id="bad-version"),
    pytest.param(HEAD + b"Bad Header: x\r\n\r\n", "illegal header line", id="space-in-header-name"),
    pytest.param(HEAD + b"X-A: a\x00b\r\n\r\n", "illegal header", id="nul-in-value"),
    pytest.param(HEAD + b"Content-Length: 1x\r\n\r\n", "bad Content-Length", id="bad-content-length"),
    pytest.param(HEAD + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "conflicting Content-Length",
                 id="two-content-lengths"),
    pytest.param(HEAD + b"Transfer-Encoding: gzip\r\n\r\n", "Only Transfer-Encoding: chunked", id="gzip-encoding"),
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
                 "illegal chunk header: b'zz\\r\\n'", id="bad-chunk-size"),  # the bytes, not a repr of h11's buffer
    pytest.param(HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n", "malformed chunk footer",
                 id="bad-chunk-end"),
    pytest.param(HEAD + b"X-A: " + b"a" * 20_000, "Receive buffer too long", id="header-too-long"),
    pytest.param(HEAD + b"X" * 10_000 + b"\r\n\r\n", "illegal header line", id="huge-bad-header"),
]


@pytest.mark.parametrize(("data", "message"), BROKEN_FRAMING)
def test_broken_framing_gets_400_err(shared_plugin: Plugin, data: bytes, message: str) -> None:
    """uvicorn answers what h11 cannot parse before the app sees it: still a JSON Err
    naming what was wrong, and the connection closed after it."""
    log_size = shared_plugin.driver.log_path.stat().st_size
    before = shared_plugin.snapshot()
    status, headers, body, rest = raw_exchange(shared_plugin, data)
    assert status == 400, (status, body)
    assert headers["content-type"] == ACCEPT and headers["connection"] == "close", headers
    out = json.loads(body)
    assert set(out) == {"Err"} and out["Err"].startswith("malformed HTTP request: "), out
    assert message in out["Err"] and len(out["Err"]) <= 2200, out
    assert rest == b""
    # and the driver goes on serving, unchanged, with nothing thrown in its log
    assert shared_plugin.ok("Plugin.Activate") == {"Implements": ["NetworkDriver", "IpamDriver"]}
    assert shared_plugin.snapshot() == before
    with open(shared_plugin.driver.log_path, "rb") as f:
        f.seek(log_size)
        assert b"Traceback" not in f.read()


def test_well_formed_raw_request_still_served(shared_plugin: Plugin) -> None:
    """The same raw path with correct framing, chunked included, reaches the app."""
    chunked = HEAD + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    status, headers, body, _ = raw_exchange(shared_plugin, chunked)
    assert status == 200 and json.loads(body) == {"Implements": ["NetworkDriver", "IpamDriver"]}, body
    assert headers["content-type"] == ACCEPT
