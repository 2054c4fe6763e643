"""Replay what real dockerds (20.10 and 28.5) sent, byte for byte, and check the answers.

The captures' answers came from a throwaway probe, so the replies are checked for the
shape dockerd needs, not for equality. The probe's address-space names are rewritten to
ours, as dockerd would have used them after asking GetDefaultAddressSpaces.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.plugin import Plugin

# Copied into the repository (from the team's reference material, captures/README.md
# says how they were made) so that a clean clone replays them: a missing file is an
# error, never an empty parameter set.
CAPTURES = Path(__file__).with_name("captures")
SPACES = re.compile(r"\b(?:probe|lab[A-Z])-(local|global)\b")
FILES = sorted(p.name for p in CAPTURES.glob("*.jsonl"))
EXPECTED = 10  # the captures in tests/protocol/captures


def ours(raw: str) -> str:
    return SPACES.sub(lambda m: "PyoverlayLocal" if m.group(1) == "local" else "PyoverlayGlobal", raw)


def check_shape(path: str, req: Any, resp: Any) -> None:
    verb = path.lstrip("/")
    if verb == "Plugin.Activate":
        assert resp == {"Implements": ["NetworkDriver", "IpamDriver"]}
    elif verb == "NetworkDriver.GetCapabilities":
        assert resp["Scope"] == "local"
    elif verb == "NetworkDriver.CreateEndpoint":
        sent = req["Interface"]
        # never echo a field dockerd filled in: it would roll the endpoint back
        assert all(not sent.get(k) for k in resp.get("Interface", {})), resp
    elif verb == "NetworkDriver.Join":
        name = resp["InterfaceName"]
        assert name["SrcName"] and name["DstPrefix"] == "eth"
        assert len(name["SrcName"]) <= 15
        if "Gateway" in resp:
            ipaddress.IPv4Address(resp["Gateway"])
    elif verb == "NetworkDriver.EndpointOperInfo":
        assert isinstance(resp["Value"], dict)
    elif verb == "IpamDriver.RequestPool":
        assert resp["PoolID"] and ipaddress.ip_network(resp["Pool"])
    elif verb == "IpamDriver.RequestAddress":
        iface = ipaddress.ip_interface(resp["Address"])
        if req["Address"]:
            assert str(iface.ip) == req["Address"]
    elif verb == "IpamDriver.GetDefaultAddressSpaces":
        assert resp == {"LocalDefaultAddressSpace": "PyoverlayLocal", "GlobalDefaultAddressSpace": "PyoverlayGlobal"}
    else:
        assert isinstance(resp, dict)


def test_every_capture_is_there() -> None:
    assert len(FILES) == EXPECTED, FILES


@pytest.mark.parametrize("name", FILES)
def test_replay_capture(plugin: Plugin, name: str) -> None:
    divergent: set[str] = set()  # pools the probe picked itself; we pick our own
    replayed = 0
    for line in (CAPTURES / name).read_text().splitlines():
        rec = json.loads(line)
        if "path" not in rec:
            continue
        raw = ours(rec["raw"])
        if any(pool in raw for pool in divergent):
            continue
        r = plugin.raw(rec["path"].lstrip("/"), raw.encode())
        assert r.status_code == 200, (name, rec["path"], r.text)
        assert "content-type" in r.headers
        resp = r.json()
        check_shape(rec["path"], json.loads(raw) if raw else None, resp)
        captured = rec.get("resp") or {}
        if rec["path"] == "/IpamDriver.RequestPool" and ours(json.dumps(captured.get("PoolID"))) != json.dumps(
            resp["PoolID"]
        ):
            divergent.add(ours(captured["PoolID"]))
        replayed += 1
    assert replayed > 0
    # whatever the capture created it also removed: nothing of ours is left in the kernel
    if name in ("dockerd-28.5-local.jsonl", "dockerd-20.10-join-failure.jsonl", "dockerd-20.10-no-gateway.jsonl"):
        assert not {n for n in plugin.link_names() if n.startswith("po")}
        assert "PYOVERLAY" not in plugin.iptables()
