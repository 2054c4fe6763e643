"""pyoverlay doctor's checks, each fed canned answers through the callables it takes."""

from __future__ import annotations

import itertools

from driver.cluster.node import VXLAN_OVERHEAD
from driver.config import SettingsError
from driver.errors import Unavailable
from driver.ops import doctor as d

NETS = d.DriverFacts(networks=2, ipv6_networks=0, reconcile_failures=[])
FORWARD_28 = """-P FORWARD DROP
-A FORWARD -j DOCKER-USER
-A FORWARD -j PYOVERLAY-FORWARD
-A FORWARD -j DOCKER-FORWARD
"""


def test_line_format() -> None:
    assert d.Check("fail", "etcd", "down", "start it").line() == "fail  etcd: down (fix: start it)"
    assert d.Check("ok", "etcd", "up", "unused").line() == "ok    etcd: up"


def test_dockerd() -> None:
    ok = d.dockerd(lambda: {"Version": "28.5.1", "ApiVersion": "1.51"}, "unix:///x.sock")
    assert (ok.level, ok.what) == ("ok", "28.5.1 (API 1.51) at unix:///x.sock")

    def refuse() -> dict[str, str]:
        raise ConnectionError("refused")

    bad = d.dockerd(refuse, "unix:///x.sock")
    assert bad.level == "fail" and "ConnectionError: refused" in bad.what and "--docker-host" in bad.fix


def test_driver_socket() -> None:
    assert d.driver_socket(lambda: (200, {"Implements": ["NetworkDriver", "IpamDriver"]}), "/s").level == "ok"
    assert d.driver_socket(lambda: (404, {"Err": "x"}), "/s").level == "fail"

    def gone() -> tuple[int, object]:
        raise Unavailable("driver socket /s: No such file or directory")

    assert "No such file" in d.driver_socket(gone, "/s").what


def test_firewall_backend() -> None:
    assert "nf_tables backend" in d.firewall_backend(lambda argv: (0, "iptables v1.8.9 (nf_tables)\n")).what
    assert "legacy backend" in d.firewall_backend(lambda argv: (0, "iptables v1.8.7 (legacy)\n")).what
    assert d.firewall_backend(lambda argv: (127, "iptables: not found")).level == "fail"


def test_forward_jump_in_place() -> None:
    c = d.forward_jump(FORWARD_28, NETS)
    assert (c.level, c.what) == ("ok", "rule 2, after DOCKER-USER (rule 1), before DOCKER-FORWARD (rule 3)")
    legacy = "-A FORWARD -j DOCKER-USER\n-A FORWARD -j PYOVERLAY-FORWARD\n-A FORWARD -j DOCKER-ISOLATION-STAGE-1\n"
    assert d.forward_jump(legacy, NETS).level == "ok"


def test_forward_jump_missing_or_misplaced() -> None:
    missing = FORWARD_28.replace("-A FORWARD -j PYOVERLAY-FORWARD\n", "")
    assert d.forward_jump(missing, NETS).level == "fail"
    assert d.forward_jump(missing, d.DriverFacts(0, 0, [])).level == "ok"
    assert d.forward_jump(missing, None).level == "warn"
    before_user = "-A FORWARD -j PYOVERLAY-FORWARD\n-A FORWARD -j DOCKER-USER\n"
    assert "before DOCKER-USER" in d.forward_jump(before_user, NETS).what
    after = "-A FORWARD -j DOCKER-USER\n-A FORWARD -j DOCKER-FORWARD\n-A FORWARD -j PYOVERLAY-FORWARD\n"
    c = d.forward_jump(after, NETS)
    assert c.level == "ok" and "after dockerd's DOCKER-FORWARD" in c.what, "where dockerd puts it; harmless"
    assert d.forward_jump(None, NETS).level == "warn"


def test_forward_policy() -> None:
    assert d.forward_policy(FORWARD_28, dockerd_up=True).level == "ok"  # type: ignore[union-attr]
    left = d.forward_policy(FORWARD_28, dockerd_up=False)
    assert left is not None and left.level == "warn" and "left by dockerd" in left.what
    assert d.forward_policy("-P FORWARD ACCEPT\n", dockerd_up=False).what == "ACCEPT"  # type: ignore[union-attr]


def _sysctls(**values: str) -> d.SysctlReader:
    table = {k.replace("__", "/"): v for k, v in values.items()}
    return table.get


def test_forwarding() -> None:
    on = d.forwarding(_sysctls(net__ipv4__ip_forward="1", net__ipv6__conf__all__forwarding="1"), NETS)
    assert [c.level for c in on] == ["ok", "ok"]
    off = d.forwarding(_sysctls(net__ipv4__ip_forward="0", net__ipv6__conf__all__forwarding="0"),
                       d.DriverFacts(2, 1, []))  # fmt: skip
    assert [c.level for c in off] == ["fail", "warn"]
    idle = d.forwarding(_sysctls(net__ipv4__ip_forward="0"), d.DriverFacts(0, 0, []))
    assert [c.level for c in idle] == ["ok", "ok"]


def test_br_netfilter() -> None:
    key = "net/bridge/bridge-nf-call-iptables"
    assert d.br_netfilter({key: "1"}.get).level == "ok"
    zero = d.br_netfilter({key: "0"}.get)
    assert zero.level == "fail" and "icc=false is not enforced" in zero.what
    assert d.br_netfilter({}.get).level == "warn"


def test_firewalld() -> None:
    assert d.firewalld(lambda: True).level == "warn"
    assert d.firewalld(lambda: False).what == "not running"
    assert d.firewalld(lambda: None).what == "not installed"


def test_etcd_latency() -> None:
    ticks = itertools.count(0.0, 0.004)
    ok = d.etcd(lambda: None, "http://e:2379", clock=lambda: next(ticks))
    assert ok.level == "ok" and "4.0 ms" in ok.what
    slow = itertools.count(0.0, 0.8)
    assert d.etcd(lambda: None, "http://e:2379", clock=lambda: next(slow)).level == "warn"

    def down() -> None:
        raise Unavailable("etcd at http://e:2379: get hosts/: no member reachable")

    bad = d.etcd(down, "http://e:2379")
    assert bad.level == "fail" and "no member reachable" in bad.what


def test_underlay_mtu() -> None:
    ok = d.underlay(lambda: ("10.0.0.5", "eth0", 1500), VXLAN_OVERHEAD)
    assert ok.what == "VTEP 10.0.0.5 on eth0 (MTU 1500): overlay networks get MTU 1450"
    assert "MTU 1430" in d.underlay(lambda: ("fd00::5", "eth0", 1500), VXLAN_OVERHEAD).what
    assert d.underlay(lambda: ("10.0.0.5", "eth0", 1300), VXLAN_OVERHEAD).level == "warn"

    def no_route() -> tuple[str, str, int]:
        raise SettingsError("--advertise-addr (PYOVERLAY_ADVERTISE_ADDR): this host has no default route")

    assert d.underlay(no_route, VXLAN_OVERHEAD).level == "fail"


def test_reconciliation_failures_are_a_warning() -> None:
    assert d.reconciliation(NETS) is None
    c = d.reconciliation(d.DriverFacts(1, 0, ["network 111111111111: bridge gone"]))
    assert c is not None and c.level == "warn" and "bridge gone" in c.what
