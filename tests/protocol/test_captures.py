"""Replay what real dockerds (20.10 and 28.5) sent, and check what every answer means.

The captures' answers came from a throwaway probe, so ours are never compared with
them: each is checked against what its request (and the requests before it) asked for,
and against the kernel and the records it leaves. The probe's address-space names are
rewritten to ours, as dockerd would have used them after asking GetDefaultAddressSpaces,
and where our IPAM picked another pool or address than the probe did, the later requests
carry ours, as they would have from dockerd: every other byte is sent as captured.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from driver.config import load_settings
from tests.plugin import Plugin

# Copied into the repository (from the team's reference material, captures/README.md
# says how they were made) so that a clean clone replays them: a missing file is an
# error, never an empty parameter set.
CAPTURES = Path(__file__).with_name("captures")
SPACES = re.compile(r"\b(?:probe|lab[A-Z])-(local|global)\b")
FILES = sorted(p.name for p in CAPTURES.glob("*.jsonl"))
EXPECTED = 10  # the captures in tests/protocol/captures

GATEWAY_TYPE = "com.docker.network.gateway"  # libnetwork's RequestAddressType for a gateway
GENERIC = "com.docker.network.generic"
IFACE_PREFIX = "com.docker.network.container_iface_prefix"
MTU = "com.docker.network.driver.mtu"
PORTMAP = "com.docker.network.portmap"
PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}  # libnetwork's types.Protocol numbers


def ours(raw: str) -> str:
    return SPACES.sub(lambda m: "PyoverlayLocal" if m.group(1) == "local" else "PyoverlayGlobal", raw)


# -- what the replay has created so far, from the requests and our answers -------------

@dataclass
class Net:
    bridge: str  # the link CreateNetwork made: the one that appeared, holding the gateways
    ipv4: list[dict[str, Any]]
    ipv6: list[dict[str, Any]]
    internal: bool
    prefix: str


@dataclass
class Ep:
    network: str
    address: str | None
    address_v6: str | None
    mac: str | None
    host_if: str  # the end enslaved to the bridge
    ctr_if: str  # the end libnetwork moves into the sandbox
    ports: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Pool:
    space: str
    net: ipaddress.IPv4Network | ipaddress.IPv6Network
    subpool: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    held: set[str] = field(default_factory=set)  # bare IPs
    # Captured strings (PoolID, pool, addresses) that name what we picked differently.
    renames: dict[str, str] = field(default_factory=dict)
    foreign: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None  # the probe's pick, if not ours


def default_pools(v6: bool) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int]]:
    # The driver reads the same settings (and the same environment) as this process.
    s = load_settings({})
    specs = s.default_pools_v6 if v6 else s.default_pools_v4
    return [(ipaddress.ip_network(base), int(size)) for base, _, size in (x.rpartition(":") for x in specs)]


def kernel(p: Plugin) -> dict[str, dict[str, Any]]:
    return {ln["ifname"]: ln for ln in p.ns.ip_json("-d", "addr", "show")}


def addresses(link: dict[str, Any]) -> set[str | None]:
    return {norm(f"{a['local']}/{a['prefixlen']}") for a in link.get("addr_info", [])}


def norm(cidr: str | None) -> str | None:
    """One spelling per address (dockerd's and the kernel's may differ for IPv6)."""
    return None if not cidr else str(ipaddress.ip_interface(cidr))


def kind(link: dict[str, Any]) -> str:
    return str((link.get("linkinfo") or {}).get("info_kind", ""))


def dnat_rules(p: Plugin) -> list[dict[str, str]]:
    """Each DNAT rule's options, e.g. {"-p": "tcp", "--dport": "8080", "--to-destination": "10.77.0.4:80"}."""
    out = []
    for line in p.iptables().splitlines():
        words = line.split()
        if "DNAT" in words and "--to-destination" in words:
            out.append({w: v for w, v in zip(words, [*words[1:], ""], strict=True) if w.startswith("-")})
    return out


def gateway_of(address: str | None, subnets: list[dict[str, Any]]) -> str | None:
    """The bare IP of the Gateway CreateNetwork gave for the subnet holding ``address``."""
    if not address:
        return None
    ip = ipaddress.ip_interface(address).ip
    for s in subnets:
        if s.get("Gateway") and ip in ipaddress.ip_network(s["Pool"]):
            gw = ipaddress.ip_interface(s["Gateway"])
            assert gw.ip in ipaddress.ip_network(s["Pool"]), ("a gateway outside its pool was sent", s)
            return str(gw.ip)
    return None


def strings(obj: Any) -> Iterator[str]:
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings(v)


def ip_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_interface(text).ip
    except ValueError:
        return None


class Replay:
    """One capture against one fresh driver: every answer checked for what it means."""

    def __init__(self, plugin: Plugin, name: str) -> None:
        self.p = plugin
        self.name = name
        self.nets: dict[str, Net] = {}
        self.eps: dict[str, Ep] = {}
        self.pools: dict[str, Pool] = {}
        self.links = kernel(plugin)
        self.step = ""
        self.checks: dict[str, Callable[[Any, Any], None]] = {
            "Plugin.Activate": self.activate,
            "NetworkDriver.GetCapabilities": self.net_capabilities,
            "NetworkDriver.CreateNetwork": self.create_network,
            "NetworkDriver.DeleteNetwork": self.delete_network,
            "NetworkDriver.AllocateNetwork": self.allocate_network,
            "NetworkDriver.FreeNetwork": self.empty,
            "NetworkDriver.CreateEndpoint": self.create_endpoint,
            "NetworkDriver.DeleteEndpoint": self.delete_endpoint,
            "NetworkDriver.EndpointOperInfo": self.oper_info,
            "NetworkDriver.Join": self.join,
            "NetworkDriver.Leave": self.empty,
            "NetworkDriver.ProgramExternalConnectivity": self.program,
            "NetworkDriver.RevokeExternalConnectivity": self.revoke,
            "NetworkDriver.DiscoverNew": self.empty,
            "NetworkDriver.DiscoverDelete": self.empty,
            "IpamDriver.GetCapabilities": self.ipam_capabilities,
            "IpamDriver.GetDefaultAddressSpaces": self.address_spaces,
            "IpamDriver.RequestPool": self.request_pool,
            "IpamDriver.ReleasePool": self.release_pool,
            "IpamDriver.RequestAddress": self.request_address,
            "IpamDriver.ReleaseAddress": self.release_address,
        }

    # -- the requests, as dockerd would have sent them to us ---------------------------
    def translate(self, raw: str) -> str:
        """``raw`` with the probe's picks replaced by ours (exact JSON strings only)."""
        if not raw:
            return raw
        swap: dict[str, str] = {}
        for s in strings(json.loads(raw)):
            hits = {p.renames[s] for p in self.pools.values() if s in p.renames}
            assert len(hits) <= 1, (f"{s!r} names different picks of ours in different pools", hits)
            if hits:
                swap[s] = hits.pop()
                continue
            ip = ip_of(s)
            for pool in self.pools.values():
                # An address of a pool only the probe had that nothing of ours answered for:
                # sending it as is would test a request dockerd could not have made.
                assert not (ip and pool.foreign and ip in pool.foreign), (f"no translation for {s!r}", raw)
        for old, new in swap.items():
            raw = raw.replace(json.dumps(old), json.dumps(new))
        return raw

    def learn(self, verb: str, req: Any, resp: Any, captured: Any) -> None:
        """Where our IPAM picked what the probe did not, remember what to send instead."""
        if not isinstance(captured, dict):
            return
        if verb == "IpamDriver.RequestPool" and {"PoolID", "Pool"} <= captured.keys():
            pool = self.pools[resp["PoolID"]]
            if captured["PoolID"] != resp["PoolID"]:
                pool.renames[captured["PoolID"]] = resp["PoolID"]
            if captured["Pool"] != resp["Pool"]:
                pool.renames[captured["Pool"]] = resp["Pool"]
                pool.foreign = ipaddress.ip_network(captured["Pool"])
        elif verb == "IpamDriver.RequestAddress" and captured.get("Address", resp["Address"]) != resp["Address"]:
            pool = self.pools[req["PoolID"]]
            pool.renames[captured["Address"]] = resp["Address"]
            pool.renames[captured["Address"].split("/")[0]] = resp["Address"].split("/")[0]

    def run(self) -> int:
        replayed = 0
        for line in (CAPTURES / self.name).read_text().splitlines():
            rec = json.loads(line)
            if "path" not in rec:
                self.step = rec.get("step", self.step)
                continue
            verb = rec["path"].lstrip("/")
            raw = self.translate(ours(rec["raw"]))
            req = json.loads(raw) if raw else None
            r = self.p.raw(verb, raw.encode())
            why = (self.name, self.step, verb, raw[:400], r.status_code, r.text[:400])
            assert "content-type" in r.headers, why
            resp = r.json()
            if r.status_code != 200:
                # Only where dockerd got an error too (the probe's injected failures):
                # there it may be ours to refuse, or not (ours has nothing to inject).
                assert not 200 <= rec["code"] < 300, why
                assert set(resp) == {"Err"} and isinstance(resp["Err"], str) and resp["Err"], why
                assert kernel(self.p).keys() == self.links.keys(), ("a refused call changed the links", why)
            else:
                assert verb in self.checks, ("no check for what this verb's answer means", why)
                try:
                    self.checks[verb](req, resp)
                    self.learn(verb, req, resp, json.loads(ours(json.dumps(rec.get("resp")))))
                except AssertionError as err:
                    raise AssertionError(f"{err}\n  while replaying {why}") from err
                except KeyError as err:  # a 200 for something the capture never created
                    raise AssertionError(f"unknown {err} answered 200\n  while replaying {why}") from err
            replayed += 1
        return replayed

    # -- kernel views -------------------------------------------------------------------
    def links_changed(self) -> tuple[dict[str, dict[str, Any]], set[str], set[str]]:
        before, self.links = self.links, kernel(self.p)
        return self.links, self.links.keys() - before.keys(), before.keys() - self.links.keys()

    def expect_dnat(self) -> None:
        """The DNAT rules are exactly the ports of every programmed endpoint, nothing else."""
        left = dnat_rules(self.p)
        for eid, ep in self.eps.items():
            for pm in ep.ports:
                match = [i for i, rule in enumerate(left) if self._publishes(rule, ep, pm)]
                assert match, (f"endpoint {eid[:12]}: no DNAT for {pm}", left)
                left.pop(match[0])
        assert not left, ("DNAT rules nothing programmed asked for", left)

    @staticmethod
    def _publishes(rule: dict[str, str], ep: Ep, pm: dict[str, Any]) -> bool:
        assert ep.address, ("ports published for an endpoint without an IPv4 address", pm)
        ctr = f"{ipaddress.ip_interface(ep.address).ip}:{pm['Port']}"
        lo = pm.get("HostPort") or 0
        hi = max(lo, pm.get("HostPortEnd") or 0)
        host_ip = pm.get("HostIP") or ""
        return (
            rule.get("--to-destination") == ctr
            and rule.get("-p") == PROTOCOLS[pm["Proto"]]
            and (lo == 0 or lo <= int(rule["--dport"]) <= hi)
            and (host_ip in ("", "0.0.0.0") or rule.get("-d") == f"{host_ip}/32")
        )

    def expect_ipam_records(self) -> None:
        """The driver holds exactly the pools and addresses it answered and was not told to release."""
        pools = {p["id"]: p for p in records(self.p, "pool")}
        assert pools.keys() == self.pools.keys(), ("pool records", sorted(pools), sorted(self.pools))
        assert all(ipaddress.ip_network(pools[i]["pool"]) == p.net for i, p in self.pools.items()), pools
        held = {(a["pool"], str(ipaddress.ip_address(a["address"]))) for a in records(self.p, "address")}
        want = {(i, a) for i, p in self.pools.items() for a in p.held}
        assert held == want, ("address records", sorted(held), "expected", sorted(want))

    # -- one check per verb -------------------------------------------------------------
    def empty(self, req: Any, resp: Any) -> None:
        assert resp == {}, resp

    def activate(self, req: Any, resp: Any) -> None:
        assert resp == {"Implements": ["NetworkDriver", "IpamDriver"]}, resp

    def net_capabilities(self, req: Any, resp: Any) -> None:
        # local: pyoverlay keeps its own cluster state (etcd), and a global-scope driver
        # would be refused in swarm mode (the global-scope captures show how).
        assert resp == {"Scope": "local", "ConnectivityScope": "local", "GwAllocChecker": False}, resp

    def ipam_capabilities(self, req: Any, resp: Any) -> None:
        # No replay: the driver persists pools itself (driver.ipam.service.capabilities).
        assert resp == {"RequiresMACAddress": False, "RequiresRequestReplay": False}, resp

    def address_spaces(self, req: Any, resp: Any) -> None:
        assert resp == {"LocalDefaultAddressSpace": "PyoverlayLocal", "GlobalDefaultAddressSpace": "PyoverlayGlobal"}

    def create_network(self, req: Any, resp: Any) -> None:
        assert resp == {}, resp
        nid = req["NetworkID"]
        links, new, gone = self.links_changed()
        assert not gone, ("CreateNetwork removed links", gone)
        if nid in self.nets:  # dockerd repeated it: nothing new
            assert not new, ("a repeated CreateNetwork made links", new)
            return
        assert len(new) == 1, ("CreateNetwork should make exactly one bridge", new)
        bridge = links[new.pop()]
        assert kind(bridge) == "bridge" and "UP" in bridge["flags"], bridge
        gateways = {norm(s["Gateway"]) for s in (*req["IPv4Data"], *req["IPv6Data"]) if s.get("Gateway")}
        assert gateways <= addresses(bridge), ("the bridge does not hold the gateways", gateways, bridge)
        generic = req["Options"].get(GENERIC) or {}
        if MTU in generic:
            assert bridge["mtu"] == int(generic[MTU]), bridge
        self.nets[nid] = Net(
            bridge=bridge["ifname"], ipv4=req["IPv4Data"], ipv6=req["IPv6Data"] or [],
            internal=req["Options"].get("com.docker.network.internal") is True,
            prefix=generic.get(IFACE_PREFIX) or "eth",  # libnetwork's own default
        )

    def delete_network(self, req: Any, resp: Any) -> None:
        assert resp == {}, resp
        nid = req["NetworkID"]
        net = self.nets.pop(nid, None)
        # What dockerd did not delete first goes with its network.
        eps = [eid for eid, ep in self.eps.items() if ep.network == nid]
        expect = set() if net is None else {net.bridge}
        for eid in eps:
            ep = self.eps.pop(eid)
            expect |= {ep.host_if, ep.ctr_if}
        _, new, gone = self.links_changed()
        assert not new and gone == expect, ("DeleteNetwork: links removed", gone, "expected", expect, "made", new)
        self.expect_dnat()

    def allocate_network(self, req: Any, resp: Any) -> None:
        # Every node's CreateNetwork gets what this answer holds: all of the user's options.
        assert resp == {"Options": req["Options"]}, resp

    def create_endpoint(self, req: Any, resp: Any) -> None:
        sent = req["Interface"] or {}
        assert set(resp) == {"Interface"} and isinstance(resp["Interface"], dict), resp
        back = resp["Interface"]
        # Only fields dockerd left empty may be filled in, or it rolls the endpoint back.
        assert set(back) <= {"Address", "AddressIPv6", "MacAddress"}, resp
        assert all(not sent.get(k) for k in back), resp
        mac = (sent.get("MacAddress") or back.get("MacAddress") or "").lower() or None
        if mac:
            assert int(mac.split(":")[0], 16) & 1 == 0, ("a multicast MAC", mac)
        eid, nid = req["EndpointID"], req["NetworkID"]
        links, new, gone = self.links_changed()
        assert not gone, ("CreateEndpoint removed links", gone)
        if eid in self.eps:
            assert not new, ("a repeated CreateEndpoint made links", new)
            assert self.eps[eid].mac == mac, (self.eps[eid], resp)
            return
        net = self.nets[nid]
        assert len(new) == 2, ("CreateEndpoint should make one veth pair", new)
        host, ctr = sorted(new, key=lambda n: links[n].get("master") != net.bridge)
        assert links[host].get("master") == net.bridge and not links[ctr].get("master"), (links[host], links[ctr])
        assert kind(links[host]) == kind(links[ctr]) == "veth", (links[host], links[ctr])
        assert links[host].get("link") == ctr and links[ctr].get("link") == host, ("not peers", host, ctr)
        assert "UP" not in links[ctr]["flags"] and not links[ctr].get("addr_info"), links[ctr]
        if mac:
            assert links[ctr]["address"] == mac, (links[ctr]["address"], mac)
        assert links[ctr]["mtu"] == links[host]["mtu"] == links[net.bridge]["mtu"], (links[ctr], links[host])
        self.eps[eid] = Ep(
            network=nid, address=sent.get("Address") or back.get("Address") or None,
            address_v6=sent.get("AddressIPv6") or back.get("AddressIPv6") or None, mac=mac,
            host_if=host, ctr_if=ctr,
        )

    def delete_endpoint(self, req: Any, resp: Any) -> None:
        assert resp == {}, resp
        ep = self.eps.pop(req["EndpointID"], None)
        _, new, gone = self.links_changed()
        expect = set() if ep is None else {ep.host_if, ep.ctr_if}
        assert not new and gone == expect, ("DeleteEndpoint: links removed", gone, "expected", expect)
        self.expect_dnat()

    def oper_info(self, req: Any, resp: Any) -> None:
        ep = self.eps.get(req["EndpointID"])
        if ep is None:
            assert resp == {"Value": {}}, resp
        else:
            assert resp == {"Value": {"host_interface": ep.host_if, "mac_address": ep.mac}}, (resp, ep)

    def join(self, req: Any, resp: Any) -> None:
        ep = self.eps[req["EndpointID"]]
        net = self.nets[req["NetworkID"]]
        assert ep.network == req["NetworkID"], ("joined through another network", ep)
        want: dict[str, Any] = {"InterfaceName": {"SrcName": ep.ctr_if, "DstPrefix": net.prefix}}
        if net.internal:  # no way out, so no gateway; and dockerd must not add one
            want["DisableGatewayService"] = True
        else:
            if gw := gateway_of(ep.address, net.ipv4):
                want["Gateway"] = gw
            if gw6 := gateway_of(ep.address_v6, net.ipv6):
                want["GatewayIPv6"] = gw6
        assert resp == want, (resp, "expected", want)
        assert kernel(self.p).keys() == self.links.keys(), "Join changed the links"

    def program(self, req: Any, resp: Any) -> None:
        assert resp == {}, resp
        ep = self.eps[req["EndpointID"]]
        ports = (req.get("Options") or {}).get(PORTMAP) or []
        # No way out on an --internal network, so nothing to publish there.
        ep.ports = [] if self.nets[ep.network].internal else list(ports)
        self.expect_dnat()

    def revoke(self, req: Any, resp: Any) -> None:
        assert resp == {}, resp
        if ep := self.eps.get(req["EndpointID"]):
            ep.ports = []
        self.expect_dnat()

    def request_pool(self, req: Any, resp: Any) -> None:
        assert set(resp) == {"PoolID", "Pool", "Data"} and isinstance(resp["Data"], dict), resp
        pid, net = resp["PoolID"], ipaddress.ip_network(resp["Pool"])  # strict: a network, not a host
        assert isinstance(pid, str) and pid and pid not in self.pools, ("PoolID empty or already held", resp)
        assert net.version == (6 if req["V6"] else 4), resp
        if req["Pool"]:
            assert net == ipaddress.ip_network(req["Pool"]), ("not the pool asked for", resp)
        else:
            assert any(net.subnet_of(base) and net.prefixlen == size  # type: ignore[arg-type]
                       for base, size in default_pools(req["V6"])), ("not from the default pools", resp)
            # Not overlapping a pool already held in the same space (dockerd would reject it).
            assert not any(p.net.overlaps(net) for p in self.pools.values()
                           if p.space == req["AddressSpace"]), resp
        sub = ipaddress.ip_network(req["SubPool"]) if req["SubPool"] else None
        self.pools[pid] = Pool(space=req["AddressSpace"], net=net, subpool=sub)
        self.expect_ipam_records()

    def release_pool(self, req: Any, resp: Any) -> None:
        assert resp == {}, resp
        self.pools.pop(req["PoolID"], None)
        self.expect_ipam_records()

    def request_address(self, req: Any, resp: Any) -> None:
        assert set(resp) == {"Address", "Data"} and isinstance(resp["Data"], dict), resp
        pool = self.pools[req["PoolID"]]
        iface = ipaddress.ip_interface(resp["Address"])
        # With the pool's prefix: dockerd gives the container exactly this CIDR.
        assert iface.network == pool.net, ("not an address of the pool, with its prefix", resp, pool.net)
        ip = str(iface.ip)
        if pool.net.version == 4 and pool.net.prefixlen < 31:
            assert iface.ip not in (pool.net.network_address, pool.net.broadcast_address), resp
        assert ip not in pool.held, ("an address already given out", resp, pool.held)
        if req["Address"]:
            assert ip == str(ipaddress.ip_address(req["Address"])), ("not the address asked for", resp)
        elif pool.subpool and (req.get("Options") or {}).get("RequestAddressType") != GATEWAY_TYPE:
            assert iface.ip in pool.subpool, ("outside the --ip-range", resp, pool.subpool)
        pool.held.add(ip)
        self.expect_ipam_records()

    def release_address(self, req: Any, resp: Any) -> None:
        assert resp == {}, resp
        pool = self.pools.get(req["PoolID"])
        if pool is not None:
            ip = str(ipaddress.ip_address(req["Address"]))
            pool.held.discard(ip)
            # Released: the probe may hand the same address out again, and we another.
            pool.renames = {k: v for k, v in pool.renames.items() if v.split("/")[0] != ip}
        self.expect_ipam_records()

    # -- after the replay ---------------------------------------------------------------
    def check_end_state(self) -> None:
        """Records, links and rules are what the capture left: what it created and did not remove."""
        nets = records(self.p, "network")
        assert {n["id"] for n in nets} == self.nets.keys(), ("network records", nets, sorted(self.nets))
        assert all(n["status"] == "ready" for n in nets), nets
        eps = {e["id"]: e for e in records(self.p, "endpoint")}
        assert eps.keys() == self.eps.keys(), ("endpoint records", sorted(eps), sorted(self.eps))
        for eid, ep in self.eps.items():
            got = eps[eid]
            assert got["status"] == "ready", got
            assert (got["network_id"], norm(got["address"]), norm(got["address_v6"]), got["mac"]) == (
                ep.network, norm(ep.address), norm(ep.address_v6), ep.mac), (got, ep)
        self.expect_ipam_records()
        expect = {"lo"} | {n.bridge for n in self.nets.values()} | {
            name for ep in self.eps.values() for name in (ep.host_if, ep.ctr_if)}
        assert self.p.link_names() == expect, ("links", self.p.link_names(), "expected", expect)
        self.expect_dnat()
        rules = self.p.iptables()
        if not self.nets:  # nothing of ours left: not even our chains
            assert "PYOVERLAY" not in rules, rules
            assert "PYOVERLAY" not in self.p.iptables(v6=True)
        for net in self.nets.values():
            assert f" {net.bridge} " in rules, (net.bridge, rules)


def records(p: Plugin, kind: str) -> list[dict[str, Any]]:
    d = p.driver.state_dir / "store" / kind
    return [json.loads(f.read_text()) for f in sorted(d.glob("*.json"))] if d.exists() else []


def test_every_capture_is_there() -> None:
    assert len(FILES) == EXPECTED, FILES


@pytest.mark.parametrize("name", FILES)
def test_replay_capture(plugin: Plugin, name: str) -> None:
    replay = Replay(plugin, name)
    assert replay.run() > 0
    replay.check_end_state()
