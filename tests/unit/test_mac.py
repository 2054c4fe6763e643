import pytest

from driver.errors import InvalidRequest
from driver.network.mac import check_mac, mac_for, random_mac


def test_mac_follows_ipv4_like_docker() -> None:
    assert mac_for("10.77.0.50/24") == "02:42:0a:4d:00:32"


def test_random_mac_is_local_unicast() -> None:
    for _ in range(50):
        first = int(random_mac()[:2], 16)
        assert first & 0x02 and not first & 0x01
    assert mac_for(None) != mac_for(None)


@pytest.mark.parametrize("bad", ["02:42:0a", "zz:42:0a:4d:00:32", "01:00:5e:00:00:01", "02-42-0a-4d-00-32"])
def test_bad_mac(bad: str) -> None:
    with pytest.raises(InvalidRequest, match=r"Interface\.MacAddress"):
        check_mac("Interface.MacAddress", bad)
