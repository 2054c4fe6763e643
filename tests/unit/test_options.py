import pytest

from driver.errors import InvalidRequest
from driver.network.options import parse_options


def parse(**opts: str) -> object:
    return parse_options(opts, internal=False, enable_ipv6=False)


def test_defaults_mirror_dockers_bridge() -> None:
    cfg = parse_options({}, internal=False, enable_ipv6=False)
    assert (cfg.mode, cfg.icc, cfg.masquerade, cfg.host_binding_ipv4, cfg.iface_prefix, cfg.mtu) == (
        "bridge", True, True, "0.0.0.0", "eth", None,
    )


def test_docker_bridge_keys_are_understood() -> None:
    cfg = parse_options(
        {
            "com.docker.network.bridge.name": "br-web",
            "com.docker.network.bridge.enable_icc": "false",
            "com.docker.network.bridge.enable_ip_masquerade": "0",
            "com.docker.network.bridge.host_binding_ipv4": "127.0.0.1",
            "com.docker.network.driver.mtu": "1400",
            "com.docker.network.container_iface_prefix": "web",
            "foo": "bar",
        },
        internal=True,
        enable_ipv6=True,
    )
    assert (cfg.bridge_name, cfg.icc, cfg.masquerade, cfg.host_binding_ipv4, cfg.mtu, cfg.iface_prefix) == (
        "br-web", False, False, "127.0.0.1", 1400, "web",
    )
    assert cfg.internal and cfg.enable_ipv6


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("mode", "vlan", "option mode: unknown mode 'vlan'"),
        ("com.docker.network.bridge.name", "this-name-is-too-long", "not a valid interface name"),
        ("com.docker.network.bridge.name", "br;rm -rf /", "not a valid interface name"),
        ("com.docker.network.bridge.name", "../../etc", "not a valid interface name"),
        ("com.docker.network.bridge.name", "..", "not a valid interface name"),
        ("com.docker.network.bridge.name", "br$(id)", "not a valid interface name"),
        ("com.docker.network.driver.mtu", "abc", "is not an integer"),
        ("com.docker.network.driver.mtu", "-1", "is not an integer"),
        ("com.docker.network.driver.mtu", "67", "out of range 68-65535"),
        ("com.docker.network.driver.mtu", "70000", "out of range"),
        ("com.docker.network.bridge.enable_icc", "yes", "is not a boolean"),
        ("com.docker.network.bridge.host_binding_ipv4", "::1", "is not an IPv4 address"),
        ("com.docker.network.container_iface_prefix", "e th", "not a valid prefix"),
        ("parent", "eth0", "only valid with -o mode=macvlan"),
    ],
)
def test_bad_values_name_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_options({key: value}, internal=False, enable_ipv6=False)
    assert str(exc.value).startswith(f"option {key}: ")
    assert message in str(exc.value)


def test_ipv6_needs_mtu_1280() -> None:
    with pytest.raises(InvalidRequest, match="IPv6 needs at least 1280"):
        parse_options({"com.docker.network.driver.mtu": "1279"}, internal=False, enable_ipv6=True)


def test_non_string_value_is_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"option com\.docker\.network\.driver\.mtu: value must be a string"):
        parse_options({"com.docker.network.driver.mtu": 1400}, internal=False, enable_ipv6=False)


def test_macvlan_keys() -> None:
    cfg = parse_options({"mode": "macvlan", "parent": "eth1.10", "macvlan_mode": "private"},
                        internal=False, enable_ipv6=False)
    assert (cfg.mode, cfg.parent, cfg.macvlan_mode) == ("macvlan", "eth1.10", "private")
    with pytest.raises(InvalidRequest, match=r"option macvlan_mode: unknown mode 'nat'"):
        parse_options({"mode": "macvlan", "macvlan_mode": "nat"}, internal=False, enable_ipv6=False)
    with pytest.raises(InvalidRequest, match="only valid with -o mode=bridge"):
        parse_options({"mode": "macvlan", "com.docker.network.bridge.name": "x"}, internal=False, enable_ipv6=False)


def test_overlay_needs_a_name() -> None:
    with pytest.raises(InvalidRequest, match="option overlay: an overlay network needs its cluster-wide name"):
        parse_options({"mode": "overlay"}, internal=False, enable_ipv6=False)


@pytest.mark.parametrize("name", ["", "-app", "a/b", "x" * 64, "a b"])
def test_malformed_overlay_name_is_refused(name: str) -> None:
    with pytest.raises(InvalidRequest, match=r"option overlay: .* is not a valid overlay name"):
        parse_options({"mode": "overlay", "overlay": name}, internal=False, enable_ipv6=False)


def test_overlay_vni_and_docker_alias() -> None:
    cfg = parse_options({"mode": "overlay", "overlay": "app", "vni": "42"}, internal=False, enable_ipv6=False)
    assert (cfg.overlay, cfg.vni) == ("app", 42)
    alias = {"mode": "overlay", "overlay": "app", "com.docker.network.driver.overlay.vxlanid_list": "77"}
    assert parse_options(alias, internal=False, enable_ipv6=False).vni == 77


@pytest.mark.parametrize("vni", ["0", "16777216", "x", "-1"])
def test_vni_out_of_range(vni: str) -> None:
    with pytest.raises(InvalidRequest, match="option vni: "):
        parse_options({"mode": "overlay", "overlay": "app", "vni": vni}, internal=False, enable_ipv6=False)


def test_overlay_keys_outside_overlay_mode_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="option overlay: only valid with -o mode=overlay"):
        parse_options({"overlay": "app"}, internal=False, enable_ipv6=False)
    with pytest.raises(InvalidRequest, match="option parent: only valid with -o mode=macvlan"):
        parse_options({"mode": "overlay", "overlay": "app", "parent": "eth0"}, internal=False, enable_ipv6=False)
