from driver.firewall.iptables import Iptables, _jump_line
from driver.firewall.rules import FORWARD_CHAIN, JUMPS

FORWARD = next(j for j in JUMPS if j.chain == FORWARD_CHAIN)
DNAT = next(j for j in JUMPS if j.builtin == "PREROUTING" and j.table == "nat")


def test_forward_jump_goes_right_after_docker_user() -> None:
    lines = [":FORWARD DROP [0:0]", "-A FORWARD -j DOCKER-USER", "-A FORWARD -j DOCKER-ISOLATION-STAGE-1"]
    assert _jump_line(FORWARD, lines) == "-I FORWARD 2 -j PYOVERLAY-FORWARD"
    assert _jump_line(FORWARD, [":FORWARD ACCEPT [0:0]"]) == "-I FORWARD 1 -j PYOVERLAY-FORWARD"


def test_existing_jump_is_not_added_twice() -> None:
    assert _jump_line(FORWARD, ["-A FORWARD -j DOCKER-USER", "-A FORWARD -j PYOVERLAY-FORWARD"]) == ""


def test_nat_jumps_are_appended() -> None:
    assert _jump_line(DNAT, []) == "-A PREROUTING -m addrtype --dst-type LOCAL -j PYOVERLAY-DNAT"


def test_teardown_removes_every_copy_of_our_jumps_and_our_chains_only() -> None:
    saved = {
        "filter": [":FORWARD DROP [0:0]", ":PYOVERLAY-FORWARD - [0:0]", ":DOCKER-USER - [0:0]",
                   "-A FORWARD -j DOCKER-USER", "-A FORWARD -j PYOVERLAY-FORWARD", "-A FORWARD -j PYOVERLAY-FORWARD"],
        "nat": [":PREROUTING ACCEPT [0:0]"],
    }
    assert Iptables._teardown(saved) == [
        "*filter",
        ":PYOVERLAY-FORWARD - [0:0]",
        "-D FORWARD -j PYOVERLAY-FORWARD",
        "-D FORWARD -j PYOVERLAY-FORWARD",
        "-X PYOVERLAY-FORWARD",
        "COMMIT",
    ]
    assert Iptables._teardown({"filter": [":FORWARD ACCEPT [0:0]"]}) == []


def test_teardown_of_a_chain_with_two_jumps_deletes_it_once() -> None:
    saved = {"nat": [":PYOVERLAY-DNAT - [0:0]", "-A PREROUTING -m addrtype --dst-type LOCAL -j PYOVERLAY-DNAT",
                     "-A OUTPUT -m addrtype --dst-type LOCAL -j PYOVERLAY-DNAT"]}
    script = Iptables._teardown(saved)
    assert script.count("-X PYOVERLAY-DNAT") == 1 and script.count(":PYOVERLAY-DNAT - [0:0]") == 1
    assert "-D PREROUTING -m addrtype --dst-type LOCAL -j PYOVERLAY-DNAT" in script
    assert "-D OUTPUT -m addrtype --dst-type LOCAL -j PYOVERLAY-DNAT" in script
