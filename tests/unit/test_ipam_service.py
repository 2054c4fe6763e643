import pytest

from driver.errors import Conflict, Exhausted, InvalidRequest
from driver.ipam.service import GATEWAY_TYPE, LOCAL_SPACE, IpamService
from driver.state import Repo
from driver.store.memory import MemoryStore

GW = {"RequestAddressType": GATEWAY_TYPE}


@pytest.fixture
def ipam() -> IpamService:
    return IpamService(Repo(MemoryStore()), ["10.200.0.0/16:24"], ["fd70::/48:64"], lambda: [])


def test_requested_pool_with_range_gateway_aux_and_dynamic(ipam: IpamService) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.77.5.0/24", "10.77.5.128/25", {"k": "v"}, False)
    assert (pool.id, pool.pool, pool.subpool) == (f"{LOCAL_SPACE}/10.77.5.0/24", "10.77.5.0/24", "10.77.5.128/25")
    assert ipam.request_address(pool.id, "10.77.5.254", GW) == "10.77.5.254/24"
    # aux addresses may sit outside the --ip-range, anywhere in the pool
    assert ipam.request_address(pool.id, "10.77.5.10", {}) == "10.77.5.10/24"
    assert ipam.request_address(pool.id, "", {}) == "10.77.5.128/24"
    assert ipam.request_address(pool.id, "", {}) == "10.77.5.129/24"


def test_gateway_without_address_is_first_of_range(ipam: IpamService) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.1.0.0/24", "", {}, False)
    assert ipam.request_address(pool.id, "", GW) == "10.1.0.1/24"
    assert ipam.request_address(pool.id, "", {}) == "10.1.0.2/24"


def test_overlapping_pool_is_refused_and_changes_nothing(ipam: IpamService) -> None:
    ipam.request_pool(LOCAL_SPACE, "10.1.0.0/16", "", {}, False)
    before = dict(ipam.repo.store.data)  # type: ignore[attr-defined]
    with pytest.raises(Conflict, match=r"overlaps pool 10\.1\.0\.0/16"):
        ipam.request_pool(LOCAL_SPACE, "10.1.2.0/24", "", {}, False)
    assert ipam.repo.store.data == before  # type: ignore[attr-defined]


def test_same_pool_in_the_other_address_space_is_fine(ipam: IpamService) -> None:
    ipam.request_pool(LOCAL_SPACE, "10.1.0.0/16", "", {}, False)
    assert ipam.request_pool("PyoverlayGlobal", "10.1.0.0/16", "", {}, False).id == "PyoverlayGlobal/10.1.0.0/16"


def test_auto_pool_never_repeats_and_avoids_routes() -> None:
    routes = [__import__("ipaddress").ip_network("10.200.1.0/24")]
    ipam = IpamService(Repo(MemoryStore()), ["10.200.0.0/16:24"], ["fd70::/48:64"], lambda: routes)
    first = ipam.request_pool(LOCAL_SPACE, "", "", {}, False)
    second = ipam.request_pool(LOCAL_SPACE, "", "", {}, False)
    assert (first.pool, second.pool) == ("10.200.0.0/24", "10.200.2.0/24")
    assert ipam.request_pool(LOCAL_SPACE, "", "", {}, True).pool == "fd70::/64"


def test_release_makes_address_and_pool_reusable(ipam: IpamService) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.1.0.0/30", "", {}, False)
    ipam.request_address(pool.id, "", GW)
    ipam.request_address(pool.id, "", {})
    with pytest.raises(Exhausted, match=r"no free address left in pool 10\.1\.0\.0/30"):
        ipam.request_address(pool.id, "", {})
    ipam.release_address(pool.id, "10.1.0.2")
    assert ipam.request_address(pool.id, "", {}) == "10.1.0.2/30"
    ipam.release_pool(pool.id)
    assert ipam.request_pool(LOCAL_SPACE, "10.1.0.0/30", "", {}, False).id == pool.id


def test_errors_name_the_field(ipam: IpamService) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.1.0.0/24", "", {}, False)
    ipam.request_address(pool.id, "10.1.0.9", {})
    cases = [
        (lambda: ipam.request_address(pool.id, "10.1.0.9", {}), Conflict, "10.1.0.9 is already allocated"),
        (lambda: ipam.request_address(pool.id, "10.2.0.9", {}), InvalidRequest, "Address: 10.2.0.9 is outside pool"),
        (lambda: ipam.request_address("nope", "", {}), InvalidRequest, "PoolID: unknown pool 'nope'"),
        (lambda: ipam.request_pool("Other", "10.9.0.0/24", "", {}, False), InvalidRequest, "AddressSpace: unknown"),
        (lambda: ipam.request_pool(LOCAL_SPACE, "10.9.0.0/24", "10.8.0.0/25", {}, False), InvalidRequest,
         "SubPool: ip-range 10.8.0.0/25 is not inside pool 10.9.0.0/24"),
        (lambda: ipam.request_pool(LOCAL_SPACE, "", "10.8.0.0/25", {}, False), InvalidRequest, "SubPool: an"),
    ]
    for call, error, message in cases:
        with pytest.raises(error) as exc:
            call()
        assert message in str(exc.value)


def test_release_of_unknown_things_succeeds(ipam: IpamService) -> None:
    ipam.release_pool("PyoverlayLocal/10.9.9.0/24")
    ipam.release_address("PyoverlayLocal/10.9.9.0/24", "10.9.9.9")


def test_capabilities_decided_on_purpose() -> None:
    assert IpamService.capabilities() == {"RequiresMACAddress": False, "RequiresRequestReplay": False}
