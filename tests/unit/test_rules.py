from driver.firewall.rules import FORWARD_CHAIN, BridgeRules, render


def rules(*nets: BridgeRules) -> list[str]:
    return render(list(nets)).chains[("filter", FORWARD_CHAIN)]


def test_bridge_accepts_icc_and_egress_and_isolates_inbound() -> None:
    assert rules(BridgeRules("br0")) == [
        "-o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-i br0 -o br0 -j ACCEPT",
        "-o br0 -j DROP",
        "-i br0 -m conntrack --ctdir REPLY ! --ctstate DNAT -j DROP",
        "-i br0 -j ACCEPT",
    ]


def test_icc_false_drops_between_containers_before_egress_accept() -> None:
    r = rules(BridgeRules("br0", icc=False))
    assert r.index("-i br0 -o br0 -j DROP") < r.index("-i br0 -j ACCEPT")


def test_internal_has_no_egress() -> None:
    r = rules(BridgeRules("br0", internal=True))
    assert "-i br0 -j DROP" in r and "-o br0 -j DROP" in r
    assert not any(x.endswith("-j ACCEPT") and "-o br0" not in x for x in r)


def test_two_networks_isolated_from_each_other() -> None:
    r = rules(BridgeRules("a"), BridgeRules("b"))
    # a→b must hit b's DROP before a's egress ACCEPT, and b→a likewise
    assert r.index("-o b -j DROP") < r.index("-i a -j ACCEPT")
    assert r.index("-o a -j DROP") < r.index("-i b -j ACCEPT")


def test_no_networks_means_remove_everything() -> None:
    assert render([]).is_empty()
    assert not render([BridgeRules("a")]).is_empty()


def raw(net: BridgeRules, v6: bool = False) -> list[str]:
    return render([net], v6).chains[("raw", "PYOVERLAY-PREROUTING")]


def test_raw_drops_foreign_traffic_to_masqueraded_subnets_only() -> None:
    assert raw(BridgeRules("br0", subnets=("10.0.0.0/24",))) == [
        "-i br0 -d 127.0.0.0/8 -j DROP",
        "-d 10.0.0.0/24 ! -i br0 -j DROP",
    ]
    # routed (no masquerade): answers arrive addressed to the container, so no drop
    assert raw(BridgeRules("br0", subnets=("10.0.0.0/24",), masquerade=False)) == ["-i br0 -d 127.0.0.0/8 -j DROP"]
    assert raw(BridgeRules("br0", subnets=("fd00::/64",)), v6=True) == ["-d fd00::/64 ! -i br0 -j DROP"]
