"""AddressIndex against the obvious definition: the lowest address of lo..hi not held."""

from hypothesis import given
from hypothesis import strategies as st

from driver.ipam.index import AddressIndex

LO, HI = 5, 30  # addresses 0..40 are also requested explicitly: outside the range too


def naive_lowest(held: set[int]) -> int | None:
    return next((x for x in range(LO, HI + 1) if x not in held), None)


ops = st.lists(st.tuples(st.sampled_from(["pick", "take", "release"]), st.integers(0, 40)), max_size=200)


@given(ops)
def test_same_answers_as_a_linear_scan(steps: list[tuple[str, int]]) -> None:
    idx, held = AddressIndex(LO, HI), set[int]()
    for op, addr in steps:
        assert idx.lowest() == naive_lowest(held)
        if op == "pick" and (found := idx.lowest()) is not None:
            idx.take(found)
            held.add(found)
        elif op == "take" and addr not in held:
            idx.take(addr)
            held.add(addr)
        elif op == "release":
            idx.release(addr)
            held.discard(addr)
        assert all((x in idx) == (x in held) for x in range(41))
    assert len(idx) == len(held)
    # built from the held set alone (a reload) it answers the same
    assert AddressIndex(LO, HI, held).lowest() == naive_lowest(held)


def test_lowest_free_refills_holes_lowest_first() -> None:
    idx = AddressIndex(1, 10, range(1, 9))
    for addr in (6, 2, 4):
        idx.release(addr)
    picked = []
    for _ in range(5):
        found = idx.lowest()
        assert found is not None
        idx.take(found)
        picked.append(found)
    assert picked == [2, 4, 6, 9, 10]
    assert idx.lowest() is None


def test_range_bounds_and_addresses_outside_it() -> None:
    idx = AddressIndex(128, 130, [3, 129, 250])  # an aux address below and above the range
    assert idx.lowest() == 128
    idx.take(128)
    assert idx.lowest() == 130
    idx.take(130)
    assert idx.lowest() is None  # 3 and 250 are not in the range, they never count as free
    idx.release(3)
    assert idx.lowest() is None
    idx.release(129)
    assert idx.lowest() == 129


def test_empty_range_has_nothing_to_give() -> None:
    assert AddressIndex(10, 9).lowest() is None


def test_releasing_everything_leaves_nothing_behind() -> None:
    idx = AddressIndex(1, 100_000)
    for _ in range(1000):
        found = idx.lowest()
        assert found is not None
        idx.take(found)
    assert idx.lowest() == 1001
    for addr in range(1, 1001, 2):
        idx.release(addr)
    assert len(idx._holes) == 500
    for addr in range(2, 1001, 2):
        idx.release(addr)
    assert (len(idx), len(idx._holes), idx._next) == (0, 0, 1)
    assert len(idx._heap) <= 64  # stale entries are compacted away


def test_churn_at_the_bottom_of_a_full_run_does_not_rescan_it() -> None:
    # Hold 1..N, then repeatedly free a low address and pick twice: each pick is one step.
    n = 10_000
    idx = AddressIndex(1, 1 << 20, range(1, n + 1))
    assert idx.lowest() == n + 1
    for i in range(1, 200):
        idx.release(i)
        assert idx.lowest() == i
        idx.take(i)
        assert idx.lowest() == n + i
        idx.take(n + i)
    assert idx._next == n + 199  # it only ever moved forward, one step per pick


def test_ipv6_64_with_a_high_address_keeps_only_what_is_held() -> None:
    lo, hi = 1, (1 << 64) - 1
    idx = AddressIndex(lo, hi, [hi])
    assert idx.lowest() == 1
    idx.take(1)
    idx.release(hi)
    assert (len(idx), len(idx._holes), len(idx._heap)) == (1, 0, 0)
