import json
from pathlib import Path

import pytest

from driver.errors import Conflict, Exhausted, InvalidRequest
from driver.ipam.addresses import LocalAddressBook, migrate
from driver.ipam.service import GATEWAY_TYPE, GLOBAL_SPACE, LOCAL_SPACE, IpamService
from driver.state import AddressRecord, PoolRecord, Repo
from driver.store.local import LocalStore
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


def local(tmp_path: Path) -> IpamService:
    return IpamService(Repo(LocalStore(tmp_path)), ["10.200.0.0/16:24"], ["fd70::/48:64"], lambda: [])


def test_one_record_per_address_and_pool_facts_only(ipam: IpamService) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.77.5.0/24", "10.77.5.128/25", {}, False)
    ipam.request_address(pool.id, "", GW)
    ipam.request_address(pool.id, "10.77.5.10", {})
    ipam.request_address(pool.id, "", {})
    data = ipam.repo.store.data  # type: ignore[attr-defined]
    assert "addresses" not in json.loads(data["pool/PyoverlayLocal%2F10.77.5.0%2F24"])
    records = {k: json.loads(v) for k, v in data.items() if k.startswith("address/")}
    assert records == {
        "address/PyoverlayLocal%2F10.77.5.0%2F24%7C10.77.5.128": {
            "pool": pool.id, "address": "10.77.5.128", "purpose": "gateway"},
        "address/PyoverlayLocal%2F10.77.5.0%2F24%7C10.77.5.10": {
            "pool": pool.id, "address": "10.77.5.10", "purpose": "requested"},
        "address/PyoverlayLocal%2F10.77.5.0%2F24%7C10.77.5.129": {
            "pool": pool.id, "address": "10.77.5.129", "purpose": "dynamic"},
    }
    ipam.release_address(pool.id, "10.77.5.10")
    assert "address/PyoverlayLocal%2F10.77.5.0%2F24%7C10.77.5.10" not in data


def test_range_holes_are_refilled_lowest_first_until_exhausted(ipam: IpamService) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.77.5.0/24", "10.77.5.240/28", {}, False)
    got = [ipam.request_address(pool.id, "", {}) for _ in range(15)]  # .240-.254: .255 is broadcast
    assert (got[0], got[-1]) == ("10.77.5.240/24", "10.77.5.254/24")
    with pytest.raises(Exhausted, match=r"pool 10\.77\.5\.0/24 \(range 10\.77\.5\.240/28\)"):
        ipam.request_address(pool.id, "", {})
    assert ipam.request_address(pool.id, "10.77.5.3", {}) == "10.77.5.3/24"  # explicit: outside the range
    for addr in ("10.77.5.250", "10.77.5.244"):
        ipam.release_address(pool.id, addr)
    assert [ipam.request_address(pool.id, "", {}) for _ in range(2)] == ["10.77.5.244/24", "10.77.5.250/24"]


def test_a_reload_from_the_store_gives_the_same_answers(tmp_path: Path) -> None:
    first = local(tmp_path)
    pool = first.request_pool(LOCAL_SPACE, "10.1.0.0/24", "", {}, False)
    for _ in range(20):
        first.request_address(pool.id, "", {})
    for addr in ("10.1.0.4", "10.1.0.9", "10.1.0.10"):
        first.release_address(pool.id, addr)
    first.request_address(pool.id, "10.1.0.30", {})
    second = local(tmp_path)
    with pytest.raises(Conflict, match=r"10\.1\.0\.30 is already allocated"):
        second.request_address(pool.id, "10.1.0.30", {})
    # each has its own store cache: the second answers from what it read at start
    answers = [[svc.request_address(pool.id, "", {}) for _ in range(5)] for svc in (first, second)]
    assert answers[0] == answers[1] == ["10.1.0.4/24", "10.1.0.9/24", "10.1.0.10/24", "10.1.0.21/24", "10.1.0.22/24"]


LEGACY_POOL = (
    '{"id":"PyoverlayLocal/10.1.0.0/24","space":"PyoverlayLocal","pool":"10.1.0.0/24","subpool":null,"v6":false,'
    '"options":{"k":"v"},"addresses":{"10.1.0.1":"gateway","10.1.0.2":"address","10.1.0.7":"address"}}'
)


def test_pool_records_of_the_old_shape_are_migrated(tmp_path: Path) -> None:
    LocalStore(tmp_path).put("pool/PyoverlayLocal%2F10.1.0.0%2F24", LEGACY_POOL.encode())
    ipam = local(tmp_path)
    pool_id = "PyoverlayLocal/10.1.0.0/24"
    assert json.loads(ipam.repo.store.get("pool/PyoverlayLocal%2F10.1.0.0%2F24") or b"") == {
        "id": pool_id, "space": LOCAL_SPACE, "pool": "10.1.0.0/24", "subpool": None, "v6": False, "options": {"k": "v"},
        "overlay": None}
    assert {(r.address, r.purpose) for r in ipam.repo.addresses(pool_id)} == {
        ("10.1.0.1", "gateway"), ("10.1.0.2", "legacy"), ("10.1.0.7", "legacy")}
    with pytest.raises(Conflict):
        ipam.request_address(pool_id, "10.1.0.7", {})
    assert ipam.request_address(pool_id, "", {}) == "10.1.0.3/24"
    # migrated once: the next start finds nothing to move and the same state
    assert migrate(local(tmp_path).repo) == 0
    assert len(local(tmp_path).repo.addresses(pool_id)) == 4


def test_release_pool_removes_its_addresses_even_unknown_ones(tmp_path: Path) -> None:
    ipam = local(tmp_path)
    pool = ipam.request_pool(LOCAL_SPACE, "10.1.0.0/24", "", {}, False)
    other = ipam.request_pool(LOCAL_SPACE, "10.2.0.0/24", "", {}, False)
    ipam.request_address(pool.id, "", GW)
    ipam.request_address(other.id, "", GW)
    # what a crash after a write, before the index learnt of it, would leave
    ipam.repo.put_address(AddressRecord(pool=pool.id, address="10.1.0.77", purpose="requested"))
    ipam.release_pool(pool.id)
    assert [r.address for r in ipam.repo.addresses(pool.id)] == []
    assert [r.address for r in ipam.repo.addresses(other.id)] == ["10.2.0.1"]
    again = ipam.request_pool(LOCAL_SPACE, "10.1.0.0/24", "", {}, False)
    assert ipam.request_address(again.id, "10.1.0.77", {}) == "10.1.0.77/24"
    assert ipam.request_address(again.id, "", {}) == "10.1.0.1/24"


def test_release_of_an_address_not_held_writes_nothing(ipam: IpamService) -> None:
    pool = ipam.request_pool(LOCAL_SPACE, "10.1.0.0/24", "", {}, False)
    before = dict(ipam.repo.store.data)  # type: ignore[attr-defined]
    ipam.release_address(pool.id, "10.1.0.5")
    assert ipam.repo.store.data == before  # type: ignore[attr-defined]


def test_ipv6_64_with_a_high_explicit_address_stays_small(tmp_path: Path) -> None:
    ipam = local(tmp_path)
    pool = ipam.request_pool(GLOBAL_SPACE, "fd70:ffff:ffff:ffff::/64", "", {}, True)
    high = "fd70:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    assert ipam.request_address(pool.id, high, {}) == f"{high}/64"  # the longest key: within KEY_RE
    assert ipam.request_address(pool.id, "", GW) == "fd70:ffff:ffff:ffff::1/64"
    book = ipam.addresses
    assert isinstance(book, LocalAddressBook)
    idx = book.index(pool)
    assert (len(idx), len(idx._holes), len(idx._heap)) == (2, 0, 0)
    assert local(tmp_path).request_address(pool.id, "", {}) == "fd70:ffff:ffff:ffff::2/64"


def test_low_ipv6_addresses_stay_ipv6(ipam: IpamService) -> None:
    # A pool at :: itself (only reachable without request_pool, where ::/N means "any /N")
    ipam.repo.put_pool(PoolRecord(id=f"{LOCAL_SPACE}/::/64", space=LOCAL_SPACE, pool="::/64", v6=True))
    assert ipam.request_address(f"{LOCAL_SPACE}/::/64", "", {}) == "::1/64"


def test_docker_29_size_only_pools_pick_a_free_pool_of_that_size(tmp_path: Path) -> None:
    ipam = local(tmp_path)
    first = ipam.request_pool("", "0.0.0.0/24", "", {}, False)
    second = ipam.request_pool("", "0.0.0.0/26", "", {}, False)
    six = ipam.request_pool("", "::/96", "", {}, True)
    assert first.pool == "10.200.0.0/24"
    assert second.pool == "10.200.1.0/26", "not inside the /24 already held"
    assert six.pool == "fd70::/96"
    with pytest.raises(Exhausted, match=r"no free IPv4 /8 pool left"):
        ipam.request_pool("", "0.0.0.0/8", "", {}, False)
