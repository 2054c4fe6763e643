"""The only module that talks to pyroute2.

It works on the network namespace the driver process runs in (dockerd's), never another
one: sysctls under /proc/sys/net and iptables act on the caller's namespace, so keeping
netlink there too means no code path can reach into a namespace it did not mean to.

Every call is idempotent where the kernel allows it: adding what exists with the same
shape and deleting what is gone are not errors. Other netlink errors become
``DriverError``s that name the object and the action.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_SETLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import NTF_MASTER, NTF_SELF, NUD_NOARP, NUD_PERMANENT

from driver.errors import Conflict, DriverError, Unsupported

IFA_F_NODAD = 0x02
IFLA_INET_CONF = 1
IPV4_DEVCONF_ROUTE_LOCALNET = 26  # include/uapi/linux/ip.h
_MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}
_UNSUPPORTED_KIND = (errno.EOPNOTSUPP, errno.ENOTSUP)
_GONE = (errno.ENOENT, errno.ENODEV, errno.EADDRNOTAVAIL)
# Destinations whose route the kernel is asked for, to learn the default route's source
# address and device: RTM_GETROUTE only looks the route up, no packet is sent.
_PROBE = {False: "1.1.1.1", True: "2001:db8::1"}


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str | None
    master: int | None
    mtu: int
    mac: str
    up: bool
    link: int | None = None  # parent index of macvlan/vlan devices


@dataclass(frozen=True)
class VxlanInfo:
    """What ``add_vxlan`` sets, as the kernel reports it (for the adopt-if-compatible check)."""

    vni: int
    local: str | None
    port: int
    link: int | None  # underlay device index, None when not bound to one
    learning: bool
    proxy: bool
    mtu: int


def _vxlan_info(msg: Any) -> VxlanInfo | None:
    info = msg.get("IFLA_LINKINFO")
    if not info or info.get("IFLA_INFO_KIND") != "vxlan":
        return None
    data = info.get("IFLA_INFO_DATA")
    if data is None:  # a vxlan always carries it; kept for a kernel that would not
        return None
    local = data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6")
    return VxlanInfo(
        vni=data.get("IFLA_VXLAN_ID"),
        local=str(ipaddress.ip_address(local)) if local else None,
        port=data.get("IFLA_VXLAN_PORT"),
        link=data.get("IFLA_VXLAN_LINK") or None,
        learning=bool(data.get("IFLA_VXLAN_LEARNING")),
        proxy=bool(data.get("IFLA_VXLAN_PROXY")),
        mtu=msg.get("mtu"),
    )


def _unicast(mac: str | None) -> bool:
    if not mac or mac == "00:00:00:00:00:00":
        return False
    return not int(mac[:2], 16) & 1  # the group bit marks broadcast and multicast


def _ip(text: str) -> str:
    """Canonical text of an address, so IPv6 compares and keys the way the kernel prints it."""
    return str(ipaddress.ip_address(text))


def _link(msg: Any) -> Link:
    info = msg.get("IFLA_LINKINFO")
    return Link(
        index=msg["index"],
        name=msg.get("ifname"),
        kind=info.get("IFLA_INFO_KIND") if info else None,
        master=msg.get("master"),
        mtu=msg.get("mtu"),
        mac=msg.get("address"),
        up=bool(msg["flags"] & 1),
        link=msg.get("link"),
    )


class AddressInUse(Conflict):
    """EADDRINUSE: e.g. a VXLAN device brought up on a UDP port another socket holds."""


def _fail(action: str, err: NetlinkError) -> DriverError:
    text = f"{action}: {err.args[1] if len(err.args) > 1 else err}"
    if err.code == errno.EEXIST:
        return Conflict(text)
    if err.code == errno.EADDRINUSE:
        return AddressInUse(text)
    if err.code in _UNSUPPORTED_KIND:
        return Unsupported(text)
    return DriverError(text)


class Netlink:
    def __init__(self) -> None:
        self._ipr: IPRoute | None = None
        # Devices of the per-row FDB/neighbour calls, looked up once: a resync writes
        # thousands of rows, and a lookup by name costs as much as the write itself.
        self._devices: dict[str, Link] = {}

    @property
    def ipr(self) -> IPRoute:
        # Opened lazily, in the worker thread that owns it: pyroute2's sync API runs an
        # event loop of its own and must not be created on uvicorn's loop thread.
        if self._ipr is None:
            self._ipr = IPRoute()
        return self._ipr

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except NetlinkError as err:
            raise _fail(action, err) from None

    # -- links --------------------------------------------------------------
    def links(self) -> list[Link]:
        return [_link(m) for m in self._call("list links", self.ipr.get_links)]

    def link(self, name: str) -> Link | None:
        msg = self._link_msg(name)
        return _link(msg) if msg is not None else None

    def _link_msg(self, name: str) -> Any:
        try:
            # "get" asks the kernel for the one link; get_links(ifname=…) would dump and
            # decode every link in Python first (191 ms at 200 links, vs 1.3 ms).
            msgs = self.ipr.link("get", ifname=name)
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return None
            raise _fail(f"look up link {name}", err) from None
        return msgs[0] if msgs else None

    def index(self, name: str) -> int:
        link = self.link(name)
        if link is None:
            raise DriverError(f"link {name} does not exist")
        return link.index

    def add_bridge(self, name: str, mtu: int, mac: str) -> None:
        # A fixed MAC stops the bridge from taking the lowest port MAC, which would
        # change (and flush neighbours' ARP caches) each time a container joins.
        self._call(
            f"create bridge {name}",
            self.ipr.link,
            "add",
            ifname=name,
            kind="bridge",
            address=mac,
            br_stp_state=0,
            br_forward_delay=0,
        )
        # The MTU is set after creation, as a change: only then does the kernel keep it as
        # the user's. Otherwise it follows the ports' MTU and falls back to 1500 whenever
        # the last port goes (for 1500 itself there is nothing to change, nor to keep).
        self.set_link(name, mtu=mtu)

    def add_veth(self, name: str, peer: str, mtu: int, peer_mac: str) -> None:
        self._call(
            f"create veth {name}/{peer}",
            self.ipr.link,
            "add",
            ifname=name,
            kind="veth",
            mtu=mtu,
            peer={"ifname": peer, "address": peer_mac, "mtu": mtu},
        )

    def add_macvlan(self, name: str, parent: str, mode: str, mtu: int, mac: str | None) -> None:
        kwargs: dict[str, Any] = {"mtu": mtu}
        if mac:
            kwargs["address"] = mac
        self._call(
            f"create macvlan {name} on {parent}",
            self.ipr.link,
            "add",
            ifname=name,
            kind="macvlan",
            link=self.index(parent),
            macvlan_mode=_MACVLAN_MODES[mode],
            **kwargs,
        )

    def add_vlan(self, name: str, parent: str, vlan_id: int) -> None:
        self._call(
            f"create VLAN {name}",
            self.ipr.link,
            "add",
            ifname=name,
            kind="vlan",
            link=self.index(parent),
            vlan_id=vlan_id,
        )

    def set_link(self, name: str, **attrs: Any) -> None:
        self._call(f"configure link {name}", self.ipr.link, "set", index=self.index(name), **attrs)

    def set_master(self, name: str, master: str) -> None:
        self.set_link(name, master=self.index(master), state="up")

    def set_hairpin(self, name: str, on: bool) -> None:
        # IFLA_BRPORT_MODE 1 is hairpin: a port may send a frame back out where it came
        # from, which a container reaching its own published port needs.
        self._call(f"set hairpin on {name}", self.ipr.brport, "set", index=self.index(name), mode=int(on))

    def set_route_localnet(self, name: str) -> None:
        """``net.ipv4.conf.<name>.route_localnet=1``, set over netlink rather than /proc/sys,
        which is read-only inside a managed plugin.

        pyroute2 encodes IFLA_AF_SPEC/AF_INET as the struct the kernel *dumps*, not the
        nested IFLA_INET_CONF the kernel *takes*, so the attribute is packed here; the
        odd ifi_family makes pyroute2 pass it through as raw bytes (the kernel serves an
        unknown family with its generic handler).
        """
        conf = struct.pack("=HHI", 8, IPV4_DEVCONF_ROUTE_LOCALNET, 1)
        inet_conf = struct.pack("=HH", 4 + len(conf), IFLA_INET_CONF) + conf
        af_inet = struct.pack("=HH", 4 + len(inet_conf), socket.AF_INET) + inet_conf
        msg = ifinfmsg()
        msg["family"] = 0xFF
        msg["index"] = self.index(name)
        msg["attrs"] = [("IFLA_AF_SPEC", af_inet)]
        msg["header"]["type"] = RTM_SETLINK
        msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_ACK
        self._call(f"set route_localnet on {name}", self.ipr.nlm_request_batch, [msg])

    def delete(self, name: str) -> bool:
        """Delete a link; False if it was already gone."""
        try:
            self.ipr.link("del", ifname=name)
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return False
            raise _fail(f"delete link {name}", err) from None
        return True

    # -- VXLAN overlay ------------------------------------------------------------
    def vxlan(self, name: str) -> VxlanInfo | None:
        """The vxlan device ``name``; None if there is no link of that name or it is not a vxlan."""
        msg = self._link_msg(name)
        return _vxlan_info(msg) if msg is not None else None

    def add_vxlan(
        self, name: str, vni: int, local: str, port: int, *, mtu: int, mac: str, dev: str | None = None
    ) -> None:
        """Static VXLAN device: no learning, proxy ARP/ND, explicit dstport, VTEP ``local``.

        An existing device with the same VNI, local address and port (and underlay ``dev``
        when given) is kept as it is; any other link of that name raises ``Conflict``.
        """
        link = self.index(dev) if dev else None
        if self._keep_vxlan(name, vni, _ip(local), port, link):
            return
        v6 = ipaddress.ip_address(local).version == 6
        # The kernel gives a vxlan device the family of its default remote, IPv4 unless
        # told otherwise, and refuses FDB rows of the other family (EAFNOSUPPORT). Group
        # "::" makes it IPv6 without a real default destination, as moby does; 6.18 infers
        # the family from local6 alone, the group is for kernels that do not.
        addr: dict[str, Any] = {"vxlan_local6": local, "vxlan_group6": "::"} if v6 else {"vxlan_local": local}
        if link is not None:
            addr["vxlan_link"] = link
        self._call(
            f"create vxlan {name} (VNI {vni}, local {local}, port {port})",
            self.ipr.link,
            "add",
            ifname=name,
            kind="vxlan",
            vxlan_id=vni,
            vxlan_port=port,
            vxlan_learning=0,  # the FDB is programmed; a learned row would mask a missing one
            vxlan_proxy=1,  # answer ARP/NS from the device's own neighbour table
            mtu=mtu,
            address=mac,
            **addr,
        )

    def _keep_vxlan(self, name: str, vni: int, local: str, port: int, link: int | None) -> bool:
        """True if ``name`` is already the vxlan asked for; Conflict if it is something else."""
        msg = self._link_msg(name)
        if msg is None:
            return False
        info = _vxlan_info(msg)
        if info is None:
            raise Conflict(f"link {name} exists and is a {_link(msg).kind or 'device'}, not a vxlan")
        wanted = {"VNI": (info.vni, vni), "local": (info.local, local), "port": (info.port, port)}
        if link is not None:
            wanted["underlay device"] = (info.link, link)
        diff = [f"{what} {have} (wanted {want})" for what, (have, want) in wanted.items() if have != want]
        if diff:
            raise Conflict(f"vxlan {name} exists with " + ", ".join(diff))
        return True

    # -- forwarding database and neighbours of a vxlan device ------------------------
    def _device(self, name: str, fresh: bool = False) -> Link | None:
        if fresh or name not in self._devices:
            link = self.link(name)
            if link is None:
                self._devices.pop(name, None)
                return None
            self._devices[name] = link
        return self._devices[name]

    def _on_device(self, dev: str, action: str, op: Any, missing_ok: bool = False) -> None:
        """Run ``op(link)`` on ``dev``; a cached device that went (ENODEV: recreated, say) is
        looked up again once. Interface indexes are not reused soon, so a stale one can only
        fail, never reach another device."""
        for fresh in (False, True):
            link = self._device(dev, fresh)
            if link is None:
                if missing_ok:
                    return
                raise DriverError(f"{action}: link {dev} does not exist")
            try:
                op(link)
                return
            except NetlinkError as err:
                if err.code == errno.ENODEV and not fresh:
                    continue
                if missing_ok and err.code in _GONE:
                    return
                raise _fail(action, err) from None

    def fdb_replace(self, dev: str, mac: str, dst: str) -> None:
        """``bridge fdb replace MAC dev DEV dst DST self permanent``: one row per MAC."""
        # pyroute2 fills in NTF_SELF and NUD_PERMANENT|NUD_NOARP for add/append/del only;
        # a "replace" without them is sent to the (absent) master and fails EOPNOTSUPP.
        self._on_device(dev, f"set FDB entry {mac} -> {dst} on {dev}", lambda link: self.ipr.fdb(
            "replace", ifindex=link.index, lladdr=mac, dst=dst, flags=NTF_SELF, state=NUD_PERMANENT | NUD_NOARP))

    def fdb_delete(self, dev: str, mac: str, bridge: str | None = None) -> None:
        """Delete the device's own row for ``mac`` and, if ``dev`` is a port of ``bridge``, the
        row the bridge learned for it there, so no stale learned row outlives the static one.
        Missing rows (or a missing ``dev``) are not errors."""
        action = f"delete FDB entry {mac} on {dev}"
        self._on_device(dev, action, lambda link: self.ipr.fdb("del", ifindex=link.index, lladdr=mac, flags=NTF_SELF),
                        missing_ok=True)  # fmt: skip
        link = self._devices.get(dev)
        br = self._device(bridge) if bridge is not None else None
        if link is not None and br is not None and link.master == br.index:
            # The kernel deletes a master row only if it is on this port: a MAC that
            # moved to a local port (a container now on this host) is left alone.
            self._on_device(dev, f"delete {bridge}'s FDB entry {mac} on {dev}", lambda link: self.ipr.fdb(
                "del", ifindex=link.index, lladdr=mac, flags=NTF_MASTER), missing_ok=True)

    def fdb_entries(self, dev: str) -> dict[str, str]:
        """MAC -> destination of ``dev``'s own permanent unicast rows."""
        idx = self.index(dev)
        rows = self._call(f"list FDB of {dev}", self.ipr.fdb, "dump")
        return {
            r.get("NDA_LLADDR"): _ip(r.get("NDA_DST"))
            for r in rows
            if r["ifindex"] == idx and r["flags"] & NTF_SELF and r["state"] & NUD_PERMANENT
            and r.get("NDA_DST") and _unicast(r.get("NDA_LLADDR"))
        }

    def neigh_replace(self, dev: str, ip: str, mac: str) -> None:
        """Permanent neighbour ``ip`` -> ``mac`` (IPv4 or IPv6) on ``dev``, replacing any other."""
        self._on_device(dev, f"set neighbour {ip} -> {mac} on {dev}", lambda link: self.ipr.neigh(
            "replace", ifindex=link.index, dst=ip, lladdr=mac, state=NUD_PERMANENT))

    def neigh_delete(self, dev: str, ip: str) -> None:
        """Delete neighbour ``ip`` on ``dev``; a missing entry or device is not an error."""
        self._on_device(dev, f"delete neighbour {ip} on {dev}",
                        lambda link: self.ipr.neigh("del", ifindex=link.index, dst=ip), missing_ok=True)  # fmt: skip

    def neigh_entries(self, dev: str) -> dict[str, str]:
        """IP -> MAC of ``dev``'s permanent neighbours, IPv4 and IPv6."""
        idx = self.index(dev)
        rows = self._call(f"list neighbours of {dev}", self.ipr.neigh, "dump", ifindex=idx)
        return {
            _ip(n.get("NDA_DST")): n.get("NDA_LLADDR")
            for n in rows
            if n["ifindex"] == idx and n["state"] & NUD_PERMANENT and n.get("NDA_LLADDR")
        }

    # -- addresses and routes ---------------------------------------------------
    def addresses(self, name: str) -> set[str]:
        idx = self.index(name)
        msgs = self._call(f"list addresses of {name}", self.ipr.get_addr, index=idx)
        return {f"{m.get('IFA_ADDRESS')}/{m['prefixlen']}" for m in msgs}

    def add_address(self, name: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        # The gateway must answer at once; IPv6 duplicate address detection would leave
        # it "tentative" (unusable) for a second or more after every network create.
        flags = IFA_F_NODAD if iface.version == 6 else 0
        try:
            self.ipr.addr(
                "add", index=self.index(name), address=str(iface.ip), prefixlen=iface.network.prefixlen,
                flags=flags,
            )
        except NetlinkError as err:
            if err.code != errno.EEXIST:
                raise _fail(f"add address {cidr} to {name}", err) from None

    def remove_address(self, name: str, cidr: str) -> None:
        """Remove an address; a missing link or address is not an error."""
        link = self.link(name)
        if link is None:
            return
        iface = ipaddress.ip_interface(cidr)
        try:
            self.ipr.addr("del", index=link.index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except NetlinkError as err:
            if err.code not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise _fail(f"remove address {cidr} from {name}", err) from None

    def route_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """Destinations of the main table's routes, default routes excluded."""
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for r in self._call("list routes", self.ipr.get_routes, table=254):
            dst, plen = r.get("RTA_DST"), r["dst_len"]
            if dst and plen:
                nets.append(ipaddress.ip_network(f"{dst}/{plen}", strict=False))
        return nets

    def link_of_address(self, ip: str) -> Link | None:
        """The link holding the local address ``ip`` in this namespace, or None."""
        want = ipaddress.ip_address(ip)
        family = socket.AF_INET6 if want.version == 6 else socket.AF_INET
        for m in self._call("list addresses", self.ipr.get_addr, family=family):
            # IFA_LOCAL is the local end of an IPv4 address (IFA_ADDRESS is the peer on
            # point-to-point links); IPv6 has only IFA_ADDRESS.
            local = m.get("IFA_LOCAL") or m.get("IFA_ADDRESS")
            if local and ipaddress.ip_address(local) == want:
                return self._link_by_index(m["index"])
        return None

    def default_route_source(self, v6: bool = False) -> tuple[str, Link] | None:
        """Source address and device the kernel would use for a public destination, i.e.
        those of the default route; None when there is none (or it gives no source)."""
        try:
            msgs = self.ipr.route("get", dst=_PROBE[v6])
        except NetlinkError as err:
            # no route at all, or an unreachable/prohibit default
            if err.code in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES):
                return None
            raise _fail(f"look up the IPv{6 if v6 else 4} default route", err) from None
        src, oif = (msgs[0].get("RTA_PREFSRC"), msgs[0].get("RTA_OIF")) if msgs else (None, None)
        link = self._link_by_index(oif) if oif else None
        return (_ip(src), link) if src and link else None

    def _link_by_index(self, index: int) -> Link | None:
        try:
            msgs = self.ipr.link("get", index=index)
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return None
            raise _fail(f"look up link #{index}", err) from None
        return _link(msgs[0]) if msgs else None


def write_sysctl(path: str, value: str) -> None:
    """Write ``/proc/sys/<path>`` of the driver's own network namespace.

    Skipped when the value is already set: a managed plugin sees /proc/sys read-only, and
    the defaults are usually what we want anyway.
    """
    target = Path("/proc/sys") / path
    try:
        if target.read_text().strip() == value:
            return
        target.write_text(value)
    except OSError as err:
        raise DriverError(f"set sysctl {path}={value}: {err.strerror}") from None
