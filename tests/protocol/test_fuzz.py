"""Fuzz the driver's socket: >10,000 generated requests against a real driver in a netns.

What is generated (hypothesis, deterministic unless PYOVERLAY_FUZZ_SEED is set):

* raw bytes, truncated valid bodies, non-UTF-8 / overlong / encoded-surrogate bytes,
  deeply nested JSON and huge bodies (with Content-Length and chunked), on every verb;
* schema-based bodies: for every verb's wire model, each field valid, absent or of a
  wrong type, plus unknown fields and IDs of every shape;
* other HTTP methods, unknown verbs and path tricks, missing and duplicated headers,
  broken framing (over a raw socket);
* dockerd-shaped sequences with mutated fields: CreateNetwork with fuzzed options (shell
  metacharacters, long keys and values), endpoints with fuzzed Interface and Options,
  Join/Program/Revoke/Leave and deletes, and the IPAM verbs.

Checked on every response: 2xx or 4xx (5xx only 503, a bounded wait that ran out);
non-2xx bodies are exactly ``{"Err": "<non-empty str>"}``; no traceback or "Internal
Server Error" text; the driver is still alive and answers Plugin.Activate. Over a raw
socket, the server either closes without a byte or sends whole HTTP responses, and broken
framing gets the same JSON ``Err`` (driver/api/http.py), never uvicorn's text/plain 400.
At the end the records, the links in the namespace and the firewall agree, a restart
(reconciliation) changes nothing, and deleting what the fuzzer created leaves the
namespace as it started.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import json
import logging
import os
import socket
import string
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import h11
import httpx
import pytest
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from driver.api.routes import VERBS as ROUTES
from driver.api.routes import Verb
from driver.app import MAX_BODY, create_app
from tests.plugin import ACCEPT, Plugin, plugin_fixture

# A fixed seed: hypothesis explores the same inputs on every run (reproducible in CI);
# set PYOVERLAY_FUZZ_SEED to explore others. Every failure message names it.
SEED = int(os.environ.get("PYOVERLAY_FUZZ_SEED", "20240611"))
# PYOVERLAY_FUZZ_SCALE=0.1 for a quick pass (the request floor is then not checked), 5 for a long one.
SCALE = float(os.environ.get("PYOVERLAY_FUZZ_SCALE", "1"))
MIN_REQUESTS = 10_000 if SCALE >= 1 else 0
MAX_ERR = 4096  # an Err message reaches the CLI verbatim: it must stay readable

VERBS = [path[1:] for path in ROUTES]  # dockerd's verbs, and any route of our own
NO_BODY = {path[1:] for path, verb in ROUTES.items() if verb.model is None}
# How driver/api/http.py starts the Err of its 400 to framing h11 cannot parse (the app
# never sees such a request); uvicorn's own text/plain 400 would fail check().
MALFORMED = "malformed HTTP request: "

by_status: Counter[int] = Counter()  # every answer checked, by status
framing_errors = Counter[str]()  # raw requests refused before the app (that JSON 400), by mutation
dropped = Counter[str]()  # raw requests whose connection was closed without a byte, by mutation


def fuzz_settings(n: int) -> Any:
    # too_slow: every example is real I/O against the driver (netlink, iptables, fsync),
    # which is the system under test, not a slow strategy.
    return settings(
        max_examples=n, deadline=None, database=None, derandomize=False, print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )


def fuzz(n: int) -> Any:
    def wrap(fn: Any) -> Any:
        return seed(SEED)(fuzz_settings(max(1, int(n * SCALE)))(fn))

    return wrap


@pytest.fixture(scope="module")
def fz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    """A driver of its own: the end-of-run checks need to know everything it holds."""
    for p in plugin_fixture(tmp_path_factory.mktemp("fuzz")):
        _live["driver"] = p.driver
        yield p


_live: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def still_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test of the run: the driver is alive and answers Plugin.Activate."""
    yield
    if "fz" in request.fixturenames:
        alive(request.getfixturevalue("fz"))


# -- checking one answer -------------------------------------------------------------

def check(status: int, body: bytes, what: str, head: bool = False) -> Any:
    by_status[status] += 1
    if by_status.total() % 500 == 0:  # cheap: is the process still there
        assert _live["driver"].running, f"the driver died (PYOVERLAY_FUZZ_SEED={SEED})"
    why = f"{what} -> {status} {body[:500]!r} (PYOVERLAY_FUZZ_SEED={SEED})"
    assert 200 <= status < 300 or 400 <= status < 500 or status == 503, why
    text = body.decode("utf-8", "replace")
    assert "Traceback" not in text and "Internal Server Error" not in text, why
    if head:
        assert body == b"", why
        return None
    try:
        data = json.loads(body)
    except ValueError:
        raise AssertionError(f"not JSON: {why}") from None
    assert isinstance(data, dict), why
    if status >= 300:
        assert set(data) == {"Err"}, why
        assert isinstance(data["Err"], str) and data["Err"].strip(), why
        assert len(data["Err"]) <= MAX_ERR, f"Err of {len(data['Err'])} characters: {why}"
    return data


def send(p: Plugin, verb: str, body: bytes) -> tuple[int, Any]:
    """POST as dockerd does (empty Host, no Content-Type), checking the answer."""
    r = p.client.post(f"/{verb}", content=body, headers={"Host": "", "Accept": ACCEPT})
    return r.status_code, check(r.status_code, r.content, f"POST {verb} {body[:300]!r}")


def post(p: Plugin, verb: str, obj: Any) -> tuple[int, Any]:
    return send(p, verb, (json.dumps(obj) + "\n").encode())


def alive(p: Plugin) -> None:
    assert p.driver.running, f"the driver died (PYOVERLAY_FUZZ_SEED={SEED}); log: {p.driver.log_path}"
    status, out = send(p, "Plugin.Activate", b"")
    assert status == 200 and out == {"Implements": ["NetworkDriver", "IpamDriver"]}


def raw_exchange(p: Plugin, data: bytes, method: str, half_close: bool = False,
                 answers: int = 1) -> list[tuple[int, bytes]] | None:
    """Send ``data`` as is over a fresh connection; up to ``answers`` answers (fewer if the
    server closes after an answer), or None if it closed without sending a byte (only
    allowed for framing it cannot parse). Any other bytes must be whole, well-formed
    HTTP responses: a truncated or garbled one fails here."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(p.driver.socket_path))
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return _answers(s, method, answers)


def _answers(s: socket.socket, method: str, answers: int) -> list[tuple[int, bytes]] | None:
    # h11 parses what comes back; its own side only has to have "sent" a request to expect
    # a response to (nothing of it goes on the wire).
    conn = h11.Connection(h11.CLIENT)

    def expect() -> None:
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "plugin"), ("Content-Length", "0")]))
        conn.send(h11.EndOfMessage())

    expect()
    got: list[tuple[int, bytes]] = []
    received = b""
    status, body = 0, b""
    while len(got) < answers:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as err:
            if not received:
                return None
            raise AssertionError(f"not a whole HTTP response ({err}): {received[:500]!r} "
                                 f"(PYOVERLAY_FUZZ_SEED={SEED})") from None
        if event is h11.NEED_DATA:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            received += chunk
            conn.receive_data(chunk)
        elif isinstance(event, h11.Response):
            status, body = event.status_code, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            got.append((status, body))
            if conn.their_state is not h11.DONE:  # the server closes after this one
                break
            conn.start_next_cycle()
            expect()
        elif isinstance(event, h11.ConnectionClosed):
            break
        # an h11.InformationalResponse (100 Continue) is followed by the real answer
    return got if received else None


# -- strategies -----------------------------------------------------------------------

HEX = "0123456789abcdef"
hex64 = st.text(HEX, min_size=64, max_size=64)
SHELL = ["$(reboot)", "`id`", "; rm -rf /", "| nc 1.2.3.4 1", "&& true", "a\nb", "a\x00b", "../../etc/passwd",
         "'\"", "\\", "*", "%s%n", "${IFS}", "-j ACCEPT", "--help", " ", "", "\t", "\u202e", "\ud800", "\udfff",
         "é", "\u0000", "\x7f", "lo", "eth0", ".", "..", "all", "default"]
weird_text = st.one_of(
    st.sampled_from(SHELL),
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=20),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3),  # lone surrogates
    st.sampled_from([16, 257, 4097, 20_000]).map(lambda n: "x" * n),  # around the length limits
)
ids = st.one_of(
    hex64,
    st.text(string.ascii_letters + string.digits, min_size=1, max_size=130),
    st.sampled_from(["", "0", "/", "../..", "..", "a/b", "a\x00b", "A" * 129, "a" * 10_000, " " * 64, "é" * 64]),
    weird_text,
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**80), 2**80), st.floats(allow_nan=False),
    weird_text,
)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(weird_text, kids, max_size=4)),
    max_leaves=8,
)
some_id = st.one_of(hex64, hex64, hex64, ids.filter(lambda s: 0 < len(s) < 100))
unhashable = st.sampled_from(([6], {"6": 6}, [[]], {}))  # type confusion: where a look-up expects a scalar
maybe = lambda good: st.one_of(good, good, good, json_values, unhashable)  # noqa: E731 - mostly right, sometimes not
ip4 = st.builds(lambda a, b, c: f"10.{a}.{b}.{c}", st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
addr_text = st.one_of(
    ip4, ip4.map(lambda a: a + "/24"), st.sampled_from(
        ["", "fd00::1/64", "::", "0.0.0.0/0", "10.0.0.0/33", "10.0.0.1/-1", "1.2.3.4/24 ", "256.1.1.1/24",
         "fe80::1%eth0/64", "::ffff:10.0.0.1/120", "10.1.0.0/8", "ff02::1/128", "10.0.0.1/24/24"]
    ), weird_text,
)
port_entry = st.fixed_dictionaries(
    {},
    optional={
        "Proto": maybe(st.sampled_from([6, 17, 132, 0, 3, -1, 2**70])),
        "IP": maybe(st.just("")),
        "Port": maybe(st.integers(-1, 70_000)),
        "HostIP": maybe(st.sampled_from(["", "0.0.0.0", "127.0.0.1", "::", "::1", "10.0.0.1", "localhost", "1.2.3"])),
        "HostPort": maybe(st.integers(-1, 70_000)),
        "HostPortEnd": maybe(st.integers(-1, 70_000)),
    },
)
endpoint_options = st.fixed_dictionaries(
    {},
    optional={
        "com.docker.network.portmap": maybe(st.lists(port_entry, max_size=4)),
        "com.docker.network.endpoint.exposedports": maybe(st.lists(port_entry, max_size=4)),
        "com.docker.network.endpoint.macaddress": json_values,
        "com.docker.network.endpoint.ifname": json_values,
        "com.docker.network.endpoint.sysctls": json_values,
        "$(reboot)": weird_text,
        "": json_values,
        "x" * 300: weird_text,
    },
)
GENERIC_KEYS = {
    "mode": ["bridge", "bridge", "bridge", "macvlan", "overlay", "vxlan", ""],
    "com.docker.network.bridge.name": ["br-fuzz0", "fz0", "lo", "a" * 16, "br;id", "po-0", "x.y"],
    "com.docker.network.bridge.enable_icc": ["true", "false", "maybe", "1", "0"],
    "com.docker.network.bridge.enable_ip_masquerade": ["true", "false", "yes"],
    "com.docker.network.bridge.host_binding_ipv4": ["0.0.0.0", "127.0.0.1", "::1", "1.2.3.4", "x"],
    "com.docker.network.driver.mtu": ["1400", "1500", "9000", "67", "65536", "0x10", "-1", "", "1e3", "\uff11\uff12"],
    "com.docker.network.container_iface_prefix": ["eth", "net", "$(id)", "a" * 9, "1a"],
    "parent": ["eth0", "lo", "lo.10", "nosuch", "a" * 20],
    "macvlan_mode": ["bridge", "private", "nope"],
    "overlay": ["app", "a" * 70, "../x"],
    "vni": ["1", "0", "16777216", "x"],
    "com.docker.network.driver.overlay.vxlanid_list": ["1", "1,2", ",", "x"],
}
generic_options = st.one_of(
    st.just({}),
    st.fixed_dictionaries({}, optional={k: st.one_of(st.sampled_from(v), st.sampled_from(v), weird_text)
                                        for k, v in GENERIC_KEYS.items()}),
    st.dictionaries(weird_text, st.one_of(weird_text, json_values), max_size=4),
)


@functools.cache
def ipam_data(v6: bool) -> st.SearchStrategy[Any]:
    good_pool = (st.integers(0, 7).map(lambda i: f"fd00:f{i}::/64") if v6
                 else st.integers(0, 15).map(lambda i: f"10.99.{i}.0/24"))
    return st.fixed_dictionaries(
        {"Pool": maybe(st.one_of(good_pool, addr_text))},
        optional={
            "AddressSpace": maybe(st.sampled_from(["LocalDefault", "PyoverlayLocal", ""])),
            "Gateway": maybe(st.one_of(good_pool.map(lambda p: p.replace("0/24", "1/24").replace("::/64", "::1/64")),
                                       addr_text)),
            "AuxAddresses": maybe(st.dictionaries(weird_text, maybe(addr_text), max_size=3)),
        },
    )


ipam_v4 = st.lists(ipam_data(False), max_size=2)
network_options = st.fixed_dictionaries(
    {},
    optional={
        "com.docker.network.generic": maybe(generic_options),
        "com.docker.network.enable_ipv6": maybe(st.booleans()),
        "com.docker.network.internal": maybe(st.booleans()),
    },
)
interface = st.fixed_dictionaries(
    {}, optional={
        "Address": maybe(addr_text), "AddressIPv6": maybe(addr_text),
        "MacAddress": maybe(st.sampled_from(["", "02:42:0a:00:00:05", "01:00:5e:00:00:01", "zz", "0" * 100])),
    },
)
pool_id = st.one_of(
    st.sampled_from(["PyoverlayLocal/10.98.0.0/24", "PyoverlayGlobal/10.98.1.0/24", "", "PyoverlayLocal/",
                     "x/y/z", "PyoverlayLocal/10.98.0.0/33", "PyoverlayLocal/fd00::/64/x"]),
    weird_text,
)

# Field → a strategy of mostly-right values, per verb's wire model (driver/api/models.py).
FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "NetworkDriver.CreateNetwork": {"NetworkID": ids, "Options": network_options,
                                    "IPv4Data": st.lists(ipam_data(False), max_size=2),
                                    "IPv6Data": st.lists(ipam_data(True), max_size=2)},
    "NetworkDriver.DeleteNetwork": {"NetworkID": ids},
    "NetworkDriver.AllocateNetwork": {"NetworkID": ids, "Options": st.dictionaries(weird_text, weird_text, max_size=3),
                                      "IPv4Data": st.lists(ipam_data(False), max_size=1)},
    "NetworkDriver.FreeNetwork": {"NetworkID": ids},
    "NetworkDriver.CreateEndpoint": {"NetworkID": ids, "EndpointID": ids, "Interface": interface,
                                     "Options": endpoint_options},
    "NetworkDriver.EndpointOperInfo": {"NetworkID": ids, "EndpointID": ids},
    "NetworkDriver.DeleteEndpoint": {"NetworkID": ids, "EndpointID": ids},
    "NetworkDriver.Join": {"NetworkID": ids, "EndpointID": ids, "SandboxKey": weird_text,
                           "Options": st.dictionaries(weird_text, json_values, max_size=3)},
    "NetworkDriver.Leave": {"NetworkID": ids, "EndpointID": ids},
    "NetworkDriver.ProgramExternalConnectivity": {"NetworkID": ids, "EndpointID": ids, "Options": endpoint_options},
    "NetworkDriver.RevokeExternalConnectivity": {"NetworkID": ids, "EndpointID": ids},
    "NetworkDriver.DiscoverNew": {"DiscoveryType": st.integers(), "DiscoveryData": json_values},
    "NetworkDriver.DiscoverDelete": {"DiscoveryType": st.integers(), "DiscoveryData": json_values},
    "NetworkDriver.GwAllocCheck": {"Options": st.dictionaries(weird_text, json_values, max_size=3)},
    "IpamDriver.RequestPool": {"AddressSpace": st.sampled_from(["PyoverlayLocal", "PyoverlayGlobal", "", "x"]),
                               "Pool": addr_text, "SubPool": addr_text, "V6": st.booleans(),
                               "Options": st.dictionaries(weird_text, weird_text, max_size=3)},
    "IpamDriver.ReleasePool": {"PoolID": pool_id},
    "IpamDriver.RequestAddress": {"PoolID": pool_id, "Address": addr_text,
                                  "Options": st.dictionaries(weird_text, json_values, max_size=3)},
    "IpamDriver.ReleaseAddress": {"PoolID": pool_id, "Address": addr_text},
}


@st.composite
def schema_bodies(draw: st.DrawFn) -> tuple[str, Any]:
    verb = draw(st.sampled_from(tuple(sorted(FIELDS))))
    body: dict[str, Any] = {}
    for name, good in FIELDS[verb].items():
        how = draw(st.sampled_from(("good", "good", "good", "absent", "wrong", "null")))
        if how == "good":
            body[name] = draw(good)
        elif how == "wrong":
            body[name] = draw(json_values)
        elif how == "null":
            body[name] = None
    body.update(draw(st.dictionaries(weird_text, json_values, max_size=2)))
    top = draw(st.sampled_from(("object",) * 8 + ("list", "scalar")))
    return verb, body if top == "object" else ([body] if top == "list" else draw(json_scalars))


def nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    if kind == "dict":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "options":  # deep where a map is allowed any value
        return b'{"NetworkID":"' + b"1" * 64 + b'","Options":' + b'{"a":' * depth + b"1" + b"}" * depth + b"}"
    return b"[" * depth  # unterminated


class Blob(bytes):
    """Bytes that print short: hypothesis reports stay readable with megabyte bodies."""

    def __repr__(self) -> str:
        return f"Blob({len(self)} bytes: {bytes(self[:120])!r}...)" if len(self) > 200 else super().__repr__()


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    return Blob(draw(_raw_bodies()))


@st.composite
def _raw_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(("binary", "truncated", "bad-utf8", "nested", "huge", "text", "numbers")))
    if kind == "binary":
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        _, body = draw(schema_bodies())
        raw = json.dumps(body).encode()
        return raw[: draw(st.integers(0, len(raw)))]
    if kind == "bad-utf8":
        junk = draw(st.sampled_from((b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xff",
                                     b"\xf8\x88\x80\x80\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xfe\xff", b"\x00")))
        prefix = draw(st.sampled_from((b'{"NetworkID":"', b'{"PoolID":"', b'{"Options":{"', b'{"', b"\xef\xbb\xbf{\"")))
        return prefix + junk + b'":"x"}' if prefix.endswith(b'{"') else prefix + junk + b'"}'
    if kind == "nested":
        return nested(draw(st.sampled_from((10, 32, 33, 100, 999, 1000, 5000, 100_000))),
                      draw(st.sampled_from(("list", "dict", "options", "open"))))
    if kind == "huge":
        size = draw(st.sampled_from((MAX_BODY - 100, MAX_BODY + 1, 2 * MAX_BODY)))  # more: test_huge_bodies
        return b'{"NetworkID":"' + b"a" * size + b'"}'
    if kind == "numbers":
        return draw(st.sampled_from((b'{"DiscoveryType": 1e999}', b'{"DiscoveryType": NaN}', b"-Infinity",
                                     b'{"DiscoveryType": ' + b"9" * 5000 + b"}", b'{"V6": 1}', b"1" * 5000)))
    return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")


# -- the tests ------------------------------------------------------------------------

@fuzz(1500)
@given(verb=st.sampled_from([*VERBS, "NetworkDriver.Frobnicate"]), raw=raw_bodies())
def test_raw_bodies(fz: Plugin, verb: str, raw: bytes) -> None:
    """Each body twice: with Content-Length, and chunked (the limit must hold while streaming)."""
    status, out = send(fz, verb, raw)
    if len(raw) > MAX_BODY and verb in VERBS:
        assert status == 413 and "body larger than" in out["Err"], (verb, status, out)
    r = fz.client.post(f"/{verb}", content=iter([raw[i:i + 65536] for i in range(0, len(raw), 65536)]),
                       headers={"Host": "", "Accept": ACCEPT})
    out = check(r.status_code, r.content, f"chunked {verb} {raw[:200]!r}")
    if len(raw) > MAX_BODY and verb in VERBS:
        assert r.status_code == 413 and "body larger than" in out["Err"], (verb, r.status_code, out)


@fuzz(2000)
@given(case=schema_bodies(), newline=st.booleans(), other=st.sampled_from(VERBS))
def test_schema_bodies(fz: Plugin, case: tuple[str, Any], newline: bool, other: str) -> None:
    verb, body = case
    raw = json.dumps(body).encode() + (b"\n" if newline else b"")
    note(repr(raw[:2000]))
    send(fz, verb, raw)
    send(fz, other, raw)  # the same body to a verb it was not made for


PATHS = st.one_of(
    st.sampled_from(VERBS).map(lambda v: "/" + v),
    st.sampled_from([
        "/", "/Plugin", "/Plugin.", "/plugin.activate", "/NetworkDriver.createnetwork", "/Plugin.Activate/",
        "//Plugin.Activate", "/Plugin.Activate?x=1", "/Plugin.Activate#f", "/%50lugin.Activate",
        "/../Plugin.Activate", "/NetworkDriver.CreateNetwork/../../Plugin.Activate", "/%2e%2e/etc/passwd",
        "/Plugin.Activate%00", "/%00", "/%ff%fe", "/%ed%a0%80", "/" + "A" * 8000, "/docs", "/openapi.json",
        "/redoc", "/metrics", "/status", "/IpamDriver.", "/NetworkDriver.CreateNetwork;x",
    ]),
    st.text(string.ascii_letters + string.digits + "./_-%~", max_size=60).map(lambda s: "/" + s),
)


@fuzz(1200)
@given(method=st.sampled_from(["GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "FOO"]),
       path=PATHS, body=st.one_of(st.just(b""), st.just(b"{}"), st.binary(max_size=64)))
def test_methods_and_paths(fz: Plugin, method: str, path: str, body: bytes) -> None:
    """Each path with another method, then with POST."""
    for how in (method, "POST"):
        data = b"" if how == "HEAD" else body
        r = fz.client.request(how, path, content=data, headers={"Host": "", "Accept": ACCEPT})
        check(r.status_code, r.content, f"{how} {path} {data!r}", head=how == "HEAD")
        sent = r.request.url.path  # as httpx normalised it ("/../x" is "/x")
        if how != "POST" and sent[1:] in VERBS:
            assert r.status_code == 405, (how, path, r.status_code)
        if sent[1:] not in VERBS:
            assert r.status_code == 404, (how, path, r.status_code)


WELL_FORMED = ("dockerd", "no-accept", "two-accepts", "content-type-json", "content-type-form", "expect-100",
               "chunked", "http10", "lowercase-junk", "pipelined")
# What RFC 9112 says a server must refuse with a 400 (§3.2 Host missing or repeated, §6.3
# an invalid or conflicting Content-Length, §7.1 a chunk size that is not hex, §5 a field
# line without a colon): h11 cannot parse these, so the answer is the framing 400.
MUST_REFUSE = ("no-host", "two-hosts", "two-lengths-differ", "length-junk", "length-negative", "chunked-bad",
               "garbage-line")
HEADER_SETS = st.sampled_from([
    "dockerd", "no-host", "no-accept", "two-hosts", "two-accepts", "two-lengths-same", "two-lengths-differ",
    "content-type-json", "content-type-form", "content-type-junk", "expect-100", "chunked", "chunked-bad",
    "length-short", "length-long", "length-junk", "length-negative", "huge-header", "http10", "no-length",
    "te-and-length", "lowercase-junk", "garbage-line", "pipelined", "length-huge",
])


@fuzz(600)
@given(how=HEADER_SETS, verb=st.sampled_from(VERBS), case=schema_bodies())
def test_raw_http(fz: Plugin, how: str, verb: str, case: tuple[str, Any]) -> None:  # noqa: PLR0912 - one per mutation
    body = json.dumps(case[1]).encode() + b"\n"
    if verb in NO_BODY:
        body = b""
    version = "HTTP/1.0" if how == "http10" else "HTTP/1.1"
    head = [f"POST /{verb} {version}", "Host: ", "User-Agent: Go-http-client/1.1", f"Accept: {ACCEPT}"]
    length = f"Content-Length: {len(body)}"
    payload = body
    extra = {
        "no-host": [], "no-accept": [], "two-hosts": ["Host: other"], "two-accepts": ["Accept: */*"],
        "two-lengths-same": [length], "two-lengths-differ": [f"Content-Length: {len(body) + 1}"],
        "content-type-json": ["Content-Type: application/json"], "content-type-form":
            ["Content-Type: application/x-www-form-urlencoded"], "content-type-junk": ["Content-Type: \x01;;=="],
        "expect-100": ["Expect: 100-continue"], "huge-header": ["X-Big: " + "a" * 70_000],
        "lowercase-junk": ["x-junk: $(reboot)"], "garbage-line": ["this is not a header"],
    }.get(how, [])
    if how == "no-host":
        head.remove("Host: ")
    if how == "no-accept":
        head.pop()
    if how.startswith("chunked") or how == "te-and-length":
        head.append("Transfer-Encoding: chunked")
        payload = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
        if how == "chunked-bad":
            payload = b"zz\r\n" + body
        if how == "te-and-length":
            head.append(length)
    elif how == "length-short":
        head.append(f"Content-Length: {max(len(body) - 3, 0)}")
    elif how == "length-long":
        head.append(f"Content-Length: {len(body) + 10}")
    elif how == "length-junk":
        head.append("Content-Length: 1x")
    elif how == "length-negative":
        head.append("Content-Length: -1")
    elif how == "length-huge":
        head.append("Content-Length: " + "9" * 5000)
    elif how != "no-length":
        head.append(length)
    head += extra
    if how != "pipelined":
        head.append("Connection: close")
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
    if how == "pipelined":
        data += b"POST /Plugin.Activate HTTP/1.1\r\nHost: \r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    # Half-closing makes asyncio drop the connection (uvicorn keeps the default eof_received),
    # so only where the server would otherwise wait for bytes that never come.
    got = raw_exchange(fz, data, "POST", half_close=how == "length-long", answers=2 if how == "pipelined" else 1)
    check_raw(how, f"raw {how} {verb} {body[:200]!r}", got)


def check_raw(how: str, what: str, got: list[tuple[int, bytes]] | None) -> None:
    """A raw request's answers: none at all, or whole answers checked as any other; the
    framing 400 where RFC 9112 requires a refusal, and never for a well-formed request."""
    if got is None:  # closed without a byte: never for a well-formed request
        dropped[how] += 1
        assert how not in WELL_FORMED and how not in MUST_REFUSE, (what, "dropped")
        return
    assert got, (what, "bytes but no whole answer")
    outs = [check(status, out, what) for status, out in got]
    refused = got[0][0] == 400 and outs[0]["Err"].startswith(MALFORMED)
    if refused:  # framing h11 cannot parse, answered before the app sees it
        framing_errors[how] += 1
    assert not (refused and how in WELL_FORMED), (what, "a well-formed request refused as malformed", got)
    assert refused or how not in MUST_REFUSE, (what, "broken framing taken as a request", got)
    if how == "pipelined":  # the request behind it was answered too, and as itself
        assert len(got) == 2 and got[1][0] == 200, (what, got)
        assert outs[1] == {"Implements": ["NetworkDriver", "IpamDriver"]}, (what, got)


# -- dockerd-shaped sequences -----------------------------------------------------------

# Plans are drawn whole before the first request: what the driver answers must not decide
# what hypothesis draws next, or a replay (shrinking) would draw differently. "@N@" is
# replaced by a per-example number, so kept networks and pools don't collide.
@st.composite
def network_plan(draw: st.DrawFn) -> dict[str, Any]:
    nid = draw(some_id)
    gen = draw(st.one_of(st.just({}), st.just({}), generic_options))
    v4: Any = [{"AddressSpace": "LocalDefault", "Gateway": "10.97.@N@.1/24", "Pool": "10.97.@N@.0/24"}]
    if draw(st.integers(0, 5)) == 0:
        v4 = draw(ipam_v4)
    ipv6 = draw(st.integers(0, 4)) == 0
    v6: Any = [{"AddressSpace": "LocalDefault", "Gateway": "fd97:@N@::1/64", "Pool": "fd97:@N@::/64"}] if ipv6 else []
    opts: Any = {"com.docker.network.enable_ipv6": ipv6, "com.docker.network.generic": gen}
    if draw(st.integers(0, 9)) == 0:
        opts = draw(network_options)
    return {"NetworkID": nid, "Options": opts, "IPv4Data": v4, "IPv6Data": v6}


endpoint_options_or_none = st.one_of(st.just({}), endpoint_options)
step = st.one_of(
    st.sampled_from(["join", "oper", "revoke", "leave", "delete-ep", "recreate-ep"]).map(lambda op: (op, None)),
    st.tuples(st.just("program"), st.lists(port_entry, max_size=3)),
    st.tuples(st.just("garbage"), schema_bodies()),
)


@st.composite
def endpoint_plan(draw: st.DrawFn) -> dict[str, Any]:
    iface: Any = {"Address": "10.97.@N@.@I@/24"}
    if draw(st.booleans()):
        iface = draw(interface)
    return {
        "EndpointID": draw(some_id),
        "Interface": iface,
        "Options": draw(endpoint_options_or_none),
        "steps": draw(st.lists(step, min_size=1, max_size=6)),
    }


endpoint_plans = st.lists(endpoint_plan(), max_size=3)
_example = iter(range(1 << 30))
ENDPOINT_STEPS = {
    "join": ("NetworkDriver.Join", {"SandboxKey": "/var/run/docker/netns/x", "Options": {}}),
    "program": ("NetworkDriver.ProgramExternalConnectivity", {"Options": {}}),
    "oper": ("NetworkDriver.EndpointOperInfo", {}),
    "revoke": ("NetworkDriver.RevokeExternalConnectivity", {}),
    "leave": ("NetworkDriver.Leave", {}),
    "delete-ep": ("NetworkDriver.DeleteEndpoint", {}),
}


def placed(obj: Any, n: int, i: int = 0) -> Any:
    return json.loads(json.dumps(obj).replace("@N@", str(n % 250)).replace("@I@", str(i + 2)))


@fuzz(250)
@given(net=network_plan(), eps=endpoint_plans, keep=st.integers(0, 9).map(lambda k: k == 0))
def test_dockerd_sequences(fz: Plugin, net: dict[str, Any], eps: list[dict[str, Any]], keep: bool) -> None:
    n = next(_example)
    net = placed(net, n)
    nid = net["NetworkID"]
    status, _ = post(fz, "NetworkDriver.CreateNetwork", net)
    generic = net["Options"].get("com.docker.network.generic") if isinstance(net["Options"], dict) else None
    if isinstance(generic, dict) and any(len(k) > 256 or (isinstance(v, str) and len(v) > 4096)
                                         for k, v in generic.items()):
        assert status == 400, ("an option too long to be one was taken", net)
    if status != 200:
        return
    for i, raw_plan in enumerate(eps):
        plan = placed(raw_plan, n, i)
        ids_ = {"NetworkID": nid, "EndpointID": plan["EndpointID"]}
        ep = {**ids_, "Interface": plan["Interface"], "Options": plan["Options"]}
        post(fz, "NetworkDriver.CreateEndpoint", ep)
        for op, arg in plan["steps"]:
            if op == "garbage":
                post(fz, *arg)
            elif op == "recreate-ep":
                post(fz, "NetworkDriver.CreateEndpoint", ep)
            else:
                verb, extra = ENDPOINT_STEPS[op]
                post(fz, verb, {**ids_, **extra, **({"Options": {"com.docker.network.portmap": arg}} if arg else {})})
    if not keep:
        post(fz, "NetworkDriver.DeleteNetwork", {"NetworkID": nid})
        return
    # One network in ten stays for the end-of-run checks and the restart, with a container
    # as dockerd would leave it: joined, one port published (the host port picked by us).
    ids_ = {"NetworkID": nid, "EndpointID": f"{n:064x}"}
    status, _ = post(fz, "NetworkDriver.CreateEndpoint",
                     {**ids_, "Interface": {"Address": f"10.97.{n % 250}.200/24"}, "Options": {}})
    if status == 200:
        post(fz, "NetworkDriver.Join", {**ids_, "SandboxKey": "/var/run/docker/netns/kept", "Options": {}})
        post(fz, "NetworkDriver.ProgramExternalConnectivity",
             {**ids_, "Options": {"com.docker.network.portmap": [{"Proto": 6, "Port": 80, "HostPort": 0}]}})


ipam_step = st.one_of(
    st.sampled_from(["req", "rel", "rel-pool", "gw"]).map(lambda op: (op, None)),
    st.tuples(st.just("req-ip"), addr_text),
)


@fuzz(300)
@given(v6=st.booleans(), pool=st.one_of(st.just(""), st.just("@POOL@"), addr_text),
       space=st.sampled_from(["PyoverlayLocal", "PyoverlayLocal", "PyoverlayGlobal", "x"]),
       options=st.dictionaries(weird_text, weird_text, max_size=2), steps=st.lists(ipam_step, max_size=6),
       keep=st.integers(0, 9).map(lambda k: k == 0))
def test_ipam_sequences(fz: Plugin, *, v6: bool, pool: str, space: str, options: dict[str, str],
                        steps: list[tuple[str, Any]], keep: bool) -> None:
    n = next(_example) % 250
    if pool == "@POOL@":
        pool = f"fd96:{n:x}::/120" if v6 else f"10.96.{n}.0/28"
    status, out = post(fz, "IpamDriver.RequestPool",
                       {"AddressSpace": space, "Pool": pool, "SubPool": "", "Options": options, "V6": v6})
    if status != 200:
        return
    pid = out["PoolID"]
    given_addrs: list[str] = []
    for op, arg in steps:
        if op == "req":
            s, o = post(fz, "IpamDriver.RequestAddress", {"PoolID": pid, "Address": "", "Options": None})
            if s == 200:
                given_addrs.append(o["Address"].split("/")[0])
        elif op == "req-ip":
            post(fz, "IpamDriver.RequestAddress", {"PoolID": pid, "Address": arg, "Options": {}})
        elif op == "gw":
            post(fz, "IpamDriver.RequestAddress",
                 {"PoolID": pid, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}})
        elif op == "rel" and given_addrs:
            post(fz, "IpamDriver.ReleaseAddress", {"PoolID": pid, "Address": given_addrs.pop()})
        elif op == "rel-pool":
            post(fz, "IpamDriver.ReleasePool", {"PoolID": pid})
    if not keep:
        post(fz, "IpamDriver.ReleasePool", {"PoolID": pid})


@fuzz(60)
@given(size=st.sampled_from([MAX_BODY + 1, 2 * MAX_BODY, 16 * MAX_BODY]), chunked=st.booleans(),
       verb=st.sampled_from(VERBS), lie=st.booleans())
def test_huge_bodies(fz: Plugin, size: int, chunked: bool, verb: str, lie: bool) -> None:
    """Over the limit: refused with 413 without the driver holding the body."""
    chunk = b"[" * 65536
    if chunked:
        content: Any = iter([chunk] * (size // len(chunk) + 1))
        r = fz.client.post(f"/{verb}", content=content, headers={"Host": "", "Accept": ACCEPT})
        status, body = r.status_code, r.content
    elif lie:  # announce a huge body, send a little: refused from Content-Length alone
        got = raw_exchange(fz, f"POST /{verb} HTTP/1.1\r\nHost: \r\nContent-Length: {size}\r\n\r\n[[[".encode(), "POST")
        assert got, verb
        status, body = got[0]
    else:
        r = fz.client.post(f"/{verb}", content=b"{" * size, headers={"Host": "", "Accept": ACCEPT})
        status, body = r.status_code, r.content
    out = check(status, body, f"huge {size} chunked={chunked} lie={lie} {verb}")
    assert status == 413 and "body larger than" in out["Err"], (verb, status, out)


def test_driver_still_serves(fz: Plugin) -> None:
    alive(fz)


def test_unexpected_exception_is_500_err_and_logged(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """What no input reaches any more: a bug is a 500 naming the exception, never its
    traceback, and the traceback is in the log."""
    async def boom(services: Any, body: Any) -> dict[str, Any]:
        raise RuntimeError("boom")

    monkeypatch.setattr("driver.app.VERBS", {"/Plugin.Activate": Verb(None, boom)})
    activity = SimpleNamespace(started=lambda verb: 0, finished=lambda token, status: None)
    app = create_app(SimpleNamespace(activity=activity))  # type: ignore[arg-type]

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://plugin") as client:
            return await client.post("/Plugin.Activate", content=b"", headers={"Host": ""})

    with caplog.at_level(logging.ERROR, logger="driver.app"):
        r = asyncio.run(call())
    assert r.status_code == 500
    assert r.json() == {"Err": "Plugin.Activate: internal error: RuntimeError: boom"}
    assert "Traceback" not in r.text
    assert any(rec.exc_info and rec.exc_info[0] is RuntimeError for rec in caplog.records), caplog.records


# -- after the run: records, kernel and firewall agree ----------------------------------------

def _records(p: Plugin, kind: str) -> list[dict[str, Any]]:
    d = p.driver.state_dir / "store" / kind
    return [json.loads(f.read_text()) for f in sorted(d.glob("*.json"))] if d.exists() else []


def _known_links(p: Plugin) -> set[str]:
    names = {"lo"}
    for net in _records(p, "network"):
        names.add(net["config"].get("bridge_name") or f"po-{net['id'][:12]}")
    for ep in _records(p, "endpoint"):
        names |= {ep["host_if"], ep["ctr_if"]} - {""}
    return names


def test_records_kernel_and_firewall_agree(fz: Plugin) -> None:
    nets, eps = _records(fz, "network"), _records(fz, "endpoint")
    print(f"\nkept by the run: {len(nets)} networks, {len(eps)} endpoints, {len(_records(fz, 'pool'))} pools")
    assert nets and eps, "the run kept no network or endpoint: the checks below would prove nothing"
    assert all(n["status"] == "ready" for n in nets), nets
    assert all(e["status"] == "ready" for e in eps), eps
    assert {n["id"] for n in nets} >= {e["network_id"] for e in eps}
    have = fz.link_names()
    assert _known_links(fz) <= have, ("records without links", _known_links(fz) - have)
    assert have <= _known_links(fz), ("links without records", have - _known_links(fz))
    for n in nets:  # every bridge network's rules mention its bridge
        name = n["config"].get("bridge_name") or f"po-{n['id'][:12]}"
        assert name in fz.iptables(), name
    before = _state(fz)
    fz.restart()
    after = _state(fz)
    for what in before:
        if what.startswith("ip"):  # the same rules; networks' blocks may come in another order
            before[what], after[what] = sorted(before[what]), sorted(after[what])
        diff = "\n".join(difflib.unified_diff(before[what], after[what], "running", "restarted", lineterm=""))
        assert not diff, f"a restart's reconciliation changed the {what}:\n{diff}"
    alive(fz)


def _state(p: Plugin) -> dict[str, list[str]]:
    links, addrs, rules, records = p.snapshot()  # type: ignore[misc]
    return {"links": list(links), "addresses": [repr(a) for a in addrs], "iptables": list(rules),  # type: ignore[call-overload]
            "ip6tables": _rules(p.iptables(v6=True)), "records": list(records)}  # type: ignore[call-overload]


def test_cleanup_via_api_leaves_nothing(fz: Plugin) -> None:
    for net in _records(fz, "network"):
        assert post(fz, "NetworkDriver.DeleteNetwork", {"NetworkID": net["id"]})[0] == 200
    for pool in _records(fz, "pool"):
        assert post(fz, "IpamDriver.ReleasePool", {"PoolID": pool["id"]})[0] == 200
    assert fz.link_names() == {"lo"}
    left = sorted(p.relative_to(fz.driver.state_dir) for p in (fz.driver.state_dir / "store").rglob("*.json"))
    assert left == [], left
    for v6 in (False, True):  # the namespace had no rules: none may be left, nor our chains
        left = [line for line in _rules(fz.iptables(v6=v6)) if line.startswith("-A") or "PYOVERLAY" in line
                or (line.startswith(":") and " ACCEPT " not in line)]
        assert left == [], (f"leftover rules (v6={v6})", left)


def _rules(save: str) -> list[str]:
    return [line for line in save.splitlines() if not line.startswith("#")]


def test_enough_requests() -> None:
    print(f"\nfuzz: {by_status.total()} requests checked, by status {dict(sorted(by_status.items()))}; "
          f"malformed framing answered before the app, by mutation: {dict(sorted(framing_errors.items()))}; "
          f"dropped without an answer: {dict(sorted(dropped.items()))}; PYOVERLAY_FUZZ_SEED={SEED}")
    assert by_status.total() >= MIN_REQUESTS, by_status

