import ipaddress

import pytest

from driver.errors import Conflict, InvalidRequest
from driver.ipam import allocator as a
from driver.ipam.index import AddressIndex


@pytest.mark.parametrize(
    ("value", "v6", "message"),
    [
        ("10.0.0.0", None, "not a CIDR"),
        ("10.0.0.0/33", None, "not a CIDR"),
        ("bogus/24", None, "not a CIDR"),
        ("10.0.0.1/24", None, "host bits set (did you mean 10.0.0.0/24?)"),
        ("10.0.0.0/24", True, "not an IPv6 subnet"),
        ("fd00::/64", False, "not an IPv4 subnet"),
    ],
)
def test_parse_network_rejects(value: str, v6: bool | None, message: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^Pool: ") as exc:
        a.parse_network("Pool", value, v6=v6)
    assert message in str(exc.value)


def test_parse_network_accepts_both_families() -> None:
    assert str(a.parse_network("Pool", "10.1.0.0/16", v6=False)) == "10.1.0.0/16"
    assert str(a.parse_network("Pool", "fd00:1::/64", v6=True)) == "fd00:1::/64"


def test_usable_bounds_skip_network_and_broadcast() -> None:
    lo, hi = a.usable_bounds(ipaddress.ip_network("10.0.0.0/30"))
    assert (str(ipaddress.ip_address(lo)), str(ipaddress.ip_address(hi))) == ("10.0.0.1", "10.0.0.2")
    lo, hi = a.usable_bounds(ipaddress.ip_network("10.0.0.0/31"))
    assert hi - lo == 1
    lo, hi = a.usable_bounds(ipaddress.ip_network("fd00::/126"))
    assert str(ipaddress.ip_address(lo)) == "fd00::1" and str(ipaddress.ip_address(hi)) == "fd00::3"


def lowest_free(net: a.IPNet, within: a.IPNet | None, taken: list[str]) -> str | None:
    """What a dynamic RequestAddress gets, through the range and index the service uses."""
    idx = AddressIndex(*a.dynamic_range(net, within), (int(ipaddress.ip_address(t)) for t in taken))
    found = idx.lowest()
    return None if found is None else str(ipaddress.ip_address(found))


def test_lowest_free_fills_gaps_and_respects_range() -> None:
    net = ipaddress.ip_network("10.0.0.0/24")
    assert lowest_free(net, None, []) == "10.0.0.1"
    assert lowest_free(net, None, ["10.0.0.1", "10.0.0.3"]) == "10.0.0.2"
    assert lowest_free(net, None, ["10.0.0.3", "10.0.0.1", "10.0.0.2"]) == "10.0.0.4"
    rng = ipaddress.ip_network("10.0.0.128/25")
    assert lowest_free(net, rng, ["10.0.0.1"]) == "10.0.0.128"
    # the range's last address is the pool's broadcast address: never handed out
    taken = [str(ipaddress.ip_address(i)) for i in range(int(rng[0]), int(rng[-1]))]
    assert lowest_free(net, rng, taken) is None


def test_lowest_free_exhausts_small_pool() -> None:
    net = ipaddress.ip_network("10.9.0.0/30")
    assert lowest_free(net, None, ["10.9.0.1", "10.9.0.2"]) is None


def test_lowest_free_ipv6_skips_anycast() -> None:
    net = ipaddress.ip_network("fd00:1::/64")
    assert lowest_free(net, None, []) == "fd00:1::1"


@pytest.mark.parametrize(
    ("addr", "error", "message"),
    [
        ("10.1.0.5", InvalidRequest, "outside pool"),
        ("fd00::5", InvalidRequest, "outside pool"),
        ("10.0.0.0", InvalidRequest, "network or broadcast"),
        ("10.0.0.255", InvalidRequest, "network or broadcast"),
        ("10.0.0.7", Conflict, "already allocated"),
    ],
)
def test_check_requested(addr: str, error: type[Exception], message: str) -> None:
    net = ipaddress.ip_network("10.0.0.0/24")
    with pytest.raises(error, match=message):
        a.check_requested("Address", ipaddress.ip_address(addr), net, {int(ipaddress.ip_address("10.0.0.7"))})


def test_check_overlap_names_the_other_pool() -> None:
    held = [("S/10.0.0.0/16", ipaddress.ip_network("10.0.0.0/16"))]
    with pytest.raises(Conflict, match=r"10.0.5.0/24 overlaps pool 10.0.0.0/16 already allocated \(S/10.0.0.0/16\)"):
        a.check_overlap("Pool", ipaddress.ip_network("10.0.5.0/24"), held)
    a.check_overlap("Pool", ipaddress.ip_network("10.1.0.0/24"), held)
    a.check_overlap("Pool", ipaddress.ip_network("fd00::/64"), held)


def test_pick_pool_skips_taken_and_routes() -> None:
    cands = a.default_candidates(["10.200.0.0/22:24"])
    avoid = [ipaddress.ip_network("10.200.0.0/24"), ipaddress.ip_network("10.200.1.128/25")]
    assert str(a.pick_pool(cands, avoid)) == "10.200.2.0/24"
    assert a.pick_pool(a.default_candidates(["10.200.0.0/24:24"]), avoid) is None


def test_parse_address_accepts_bare_and_cidr() -> None:
    assert str(a.parse_address("Address", "10.0.0.4/24")) == "10.0.0.4"
    assert str(a.parse_address("Address", "fd00::4")) == "fd00::4"
    with pytest.raises(InvalidRequest, match="Address: 'x' is not an IP address"):
        a.parse_address("Address", "x")
