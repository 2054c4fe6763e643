"""The registry's cluster rules, on the in-memory cluster store (same contract as etcd)."""

import pytest

from driver.cluster.base import Indeterminate
from driver.cluster.memory import MemoryClusterStore
from driver.cluster.registry import OverlaySpec, Registry
from driver.errors import Conflict


def spec(**kw: object) -> OverlaySpec:
    base: dict[str, object] = {"name": "app", "subnets": ("10.60.0.0/16",), "gateways": ("10.60.0.1/16",)}
    return OverlaySpec.model_validate(base | kw)


@pytest.fixture
def store() -> MemoryClusterStore:
    return MemoryClusterStore()


def test_hosts_share_one_identity_and_vni(store: MemoryClusterStore) -> None:
    a, b = Registry(store, "h1").join(spec(), 1350), Registry(store, "h2").join(spec(), 1450)
    assert a.vni == b.vni and a.mtu == b.mtu == 1350  # the first host fixes the MTU
    assert a.gateway_mac == b.gateway_mac
    assert b.members == ("h1", "h2")


def test_join_twice_is_idempotent(store: MemoryClusterStore) -> None:
    r = Registry(store, "h1")
    assert r.join(spec(), 1450) == r.join(spec(), 1450)
    assert r.overlay("app").members == ("h1",)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            {"subnets": ("10.61.0.0/16",), "gateways": ("10.61.0.1/16",)},
            "--subnet 10.61.0.0/16 differs from the cluster's 10.60.0.0/16",
        ),
        ({"gateways": ("10.60.0.254/16",)}, "--gateway 10.60.0.254/16 differs from the cluster's 10.60.0.1/16"),
        ({"vni": 99}, "option vni 99 differs from the cluster's VNI 1"),
        ({"mtu": 1400}, "MTU 1400 differs from the cluster's MTU 1450"),
        ({"internal": True}, "--internal true differs from the cluster's false"),
    ],
)
def test_mismatch_is_refused_naming_field_and_cluster_value(
    store: MemoryClusterStore, change: dict[str, object], named: str
) -> None:
    Registry(store, "h1").join(spec(), 1450)
    with pytest.raises(Conflict, match=named):
        Registry(store, "h2").join(spec(**change), 1450)
    assert Registry(store, "h2").overlay("app").members == ("h1",)  # type: ignore[union-attr]


def test_underlay_too_small_for_the_cluster_mtu(store: MemoryClusterStore) -> None:
    Registry(store, "h1").join(spec(), 1450)
    with pytest.raises(Conflict, match=r"the cluster's MTU 1450 does not fit this host's underlay.* at most 1350"):
        Registry(store, "h2").join(spec(), 1350)


def test_requested_mtu_above_underlay(store: MemoryClusterStore) -> None:
    with pytest.raises(Conflict, match="MTU 1500 does not fit"):
        Registry(store, "h1").join(spec(mtu=1500), 1450)
    assert store.range("")[0] == {}


def test_one_subnet_two_identities(store: MemoryClusterStore) -> None:
    Registry(store, "h1").join(spec(), 1450)
    with pytest.raises(Conflict, match=r"--subnet 10.60.0.0/16: already used by overlay app"):
        Registry(store, "h2").join(spec(name="other"), 1450)
    with pytest.raises(Conflict, match=r"--subnet 10.60.5.0/24: overlaps 10.60.0.0/16, which overlay app already uses"):
        Registry(store, "h2").join(spec(name="other", subnets=("10.60.5.0/24",), gateways=()), 1450)


def test_vnis_are_unique_and_pinned_ones_checked(store: MemoryClusterStore) -> None:
    r = Registry(store, "h1")
    one = r.join(spec(), 1450)
    two = r.join(spec(name="b", subnets=("10.70.0.0/16",), gateways=()), 1450)
    assert one.vni != two.vni
    with pytest.raises(Conflict, match=f"option vni: VXLAN id {one.vni} is already used by overlay app"):
        r.join(spec(name="c", subnets=("10.80.0.0/16",), gateways=(), vni=one.vni), 1450)
    assert r.join(spec(name="d", subnets=("10.90.0.0/16",), gateways=(), vni=5000), 1450).vni == 5000


def test_last_host_out_frees_everything(store: MemoryClusterStore) -> None:
    h1, h2 = Registry(store, "h1"), Registry(store, "h2")
    vni = h1.join(spec(), 1450).vni
    h2.join(spec(), 1450)
    h1.leave("app")
    assert h2.overlay("app").members == ("h2",)  # type: ignore[union-attr]
    h2.leave("app")
    h2.leave("app")  # already gone: fine
    assert store.range("")[0] == {}
    # the VNI and subnet can be had again
    assert Registry(store, "h3").join(spec(name="new", vni=vni), 1450).vni == vni


def test_timed_out_join_that_committed_is_not_a_failure(
    store: MemoryClusterStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = Registry(store, "h1")
    real = store.txn

    def commit_then_time_out(*a: object, **kw: object) -> object:
        real(*a, **kw)  # type: ignore[arg-type]
        raise Indeterminate("etcd: request timed out")

    monkeypatch.setattr(store, "txn", commit_then_time_out)
    rec = r.join(spec(), 1450)
    assert rec.members == ("h1",)
    assert r.overlay("app") == rec


def test_memberships_lists_only_mine(store: MemoryClusterStore) -> None:
    Registry(store, "h1").join(spec(), 1450)
    Registry(store, "h2").join(spec(name="b", subnets=("10.70.0.0/16",), gateways=()), 1450)
    assert set(Registry(store, "h1").memberships()) == {"app"}
