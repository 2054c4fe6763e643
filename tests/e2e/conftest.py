"""End-to-end fixtures: real dockerd engines (20.10 and 28.5) in throwaway namespaces.

A test module gets one engine per kind (starting engines is the slow part) and
its tests run once per kind:

    def test_x(host):           # Host(kind, lab, engine, driver)
        host.engine.cli("network", "create", "-d", "pyoverlay", "n1")

    def test_y(engine, driver, outside, lan): ...

    def test_z(clean_engine): ...   # containers/networks/volumes removed after the test

    def test_w(multihost): ...      # 3 hosts (20.10, 28.5, 20.10) + etcd + outside (tests/lab/multihost.py)
    def test_v(clean_multihost): ...  # the same, docker objects removed on every host after the test

Module options (all optional), e.g. an engine without the driver:

    pytestmark = pytest.mark.lab(driver=False, kinds=("28.5",), live_restore=True,
                                 engine_args=["--debug"], daemon_config={"ipv6": True},
                                 driver_args=["--foo"])

and for `multihost` (see that fixture):

    pytestmark = pytest.mark.multihost(driver_args=overlay_driver_args, live_restore=True)

`PYOVERLAY_E2E_ENGINES=20.10` (comma list) limits the kinds for a whole run;
`PYOVERLAY_E2E_DRIVER="pyoverlay"` replaces the driver command;
`PYOVERLAY_E2E_KEEP_LOGS=/some/dir` keeps the dockerd and driver logs after teardown.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    # `tests.lab` and `driver` must import whatever rootdir or import mode pytest was given.
    sys.path.insert(0, str(REPO_ROOT))

from tests.lab import (  # noqa: E402 - needs the sys.path entry above
    ENGINE_KINDS,
    DriverProcess,
    Engine,
    Lab,
    LabError,
    LabSession,
    Lan,
    MultiHost,
    Outside,
    driver_available,
)
from tests.lab.multihost import DEFAULT_KINDS  # noqa: E402
from tests.lab.proc import tail  # noqa: E402

E2E_DIR = Path(__file__).resolve().parent
_kinds_env = os.environ.get("PYOVERLAY_E2E_ENGINES", "")
SELECTED_KINDS = [k for k in _kinds_env.split(",") if k] or list(ENGINE_KINDS)
ENGINE_PARAMS = [pytest.param(k, id=f"dockerd-{k}") for k in ENGINE_KINDS if k in SELECTED_KINDS]


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "e2e tests need root (network and mount namespaces, dockerd)"
    for tool in ("/usr/sbin/dockerd", "nsenter", "unshare", "ip", "iptables"):
        if not shutil.which(tool):
            return f"e2e tests need {tool}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lab(driver=True, kinds=None, live_restore=False, engine_args=(), daemon_config=None, driver_args=()): "
        "options for the module's e2e engine (tests/e2e/conftest.py)",
    )
    config.addinivalue_line(
        "markers",
        "multihost(driver_args=None, driver=True, live_restore=False, engine_args=(), daemon_config=None): "
        "options for the module's multi-host lab (tests/e2e/conftest.py)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    for item in items:
        if not item.path.is_relative_to(E2E_DIR):
            continue
        item.add_marker(pytest.mark.e2e)
        item.add_marker(pytest.mark.root)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On failure, attach the tails of the module's dockerd and driver logs to the report."""
    report = yield
    host = getattr(item, "funcargs", {}).get("host")
    if report.failed and isinstance(host, Host):
        report.sections.append((f"dockerd {host.kind} log tail", tail(host.engine.log_path, 60)))
        if host.driver is not None:
            report.sections.append(("driver log tail", tail(host.driver.log_path, 60)))
    mh = getattr(item, "funcargs", {}).get("multihost")
    if report.failed and isinstance(mh, MultiHost):
        report.sections += mh.log_tails(30)
    return report


@dataclass
class Host:
    """One engine "host" of a test module: its kind, Lab, Engine and (unless disabled) driver."""

    kind: str
    lab: Lab
    engine: Engine
    driver: DriverProcess | None


def _marker_options(request: pytest.FixtureRequest, name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` overridden by the module's ``pytest.mark.<name>(...)``; unknown keys are an error."""
    opts = dict(defaults)
    marker = request.node.get_closest_marker(name)
    if marker is not None:
        unknown = set(marker.kwargs) - set(opts)
        if unknown:
            raise pytest.UsageError(f"unknown {name}() options {sorted(unknown)}")
        opts.update(marker.kwargs)
    return opts


def _lab_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    defaults = {"driver": True, "kinds": None, "live_restore": False, "engine_args": (), "daemon_config": None,
                "driver_args": ()}  # fmt: skip
    return _marker_options(request, "lab", defaults)


# A setup that fails is an error, never a skip: a skipped engine would pass a run that
# tested nothing on it. Which engines run is chosen up front (PYOVERLAY_E2E_ENGINES).
def _require_driver(wanted: bool) -> None:
    if wanted and not driver_available():
        pytest.fail("driver/cli.py does not exist yet", pytrace=False)


def _require_sid_rootfs(session: LabSession) -> None:
    try:
        session.sid_rootfs()
    except LabError as e:
        pytest.fail(f"no dockerd 28.5 rootfs: {e}")


@pytest.fixture(scope="session")
def lab_session() -> Iterator[LabSession]:
    """The session: token, base dir /tmp/po-e2e-<token>/, busybox tarball, sid rootfs."""
    session = LabSession()
    yield session
    errors = session.teardown()
    left = session.leftovers()
    if errors or any(left.values()):
        raise RuntimeError(f"lab session teardown: errors={errors} leftovers={left}")


@pytest.fixture(scope="session")
def busybox_tar(lab_session: LabSession) -> Path:
    """Busybox rootfs tarball (built once per session); engines import it as bb:latest."""
    return lab_session.busybox_tar()


@pytest.fixture(scope="module", params=ENGINE_PARAMS)
def engine_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    kinds = _lab_options(request)["kinds"]
    if kinds is not None and kind not in kinds:
        pytest.skip(f"module runs only on {kinds}")
    return kind


@pytest.fixture(scope="module")
def lab(lab_session: LabSession, engine_kind: str) -> Iterator[Lab]:
    """A Lab per (module, engine kind); everything in it is torn down when the module is done."""
    module_lab = lab_session.lab("m")
    yield module_lab
    errors = module_lab.teardown()
    if errors:
        raise RuntimeError(f"lab {module_lab.label} teardown errors: {errors}")


@pytest.fixture(scope="module")
def host(lab: Lab, engine_kind: str, busybox_tar: Path, request: pytest.FixtureRequest) -> Host:
    """Started driver (first: a missing legacy plugin costs 15 s per lookup), then the started engine."""
    opts = _lab_options(request)
    _require_driver(opts["driver"])
    if engine_kind == "28.5":
        _require_sid_rootfs(lab.session)
    eng = lab.engine(
        engine_kind,
        live_restore=opts["live_restore"],
        extra_args=opts["engine_args"],
        daemon_config=opts["daemon_config"],
    )
    drv = None
    if opts["driver"]:
        drv = lab.driver(eng, extra_args=opts["driver_args"])
        drv.start()
    eng.start()
    return Host(engine_kind, lab, eng, drv)


@pytest.fixture(scope="module")
def engine(host: Host) -> Engine:
    return host.engine


@pytest.fixture
def clean_engine(engine: Engine) -> Iterator[Engine]:
    """The module's engine; after the test all containers, networks and volumes are removed."""
    yield engine
    engine.remove_objects()


@pytest.fixture(scope="module")
def driver(host: Host) -> DriverProcess:
    if host.driver is None:
        pytest.skip("module runs its engine without the driver (lab(driver=False))")
    return host.driver


@pytest.fixture(scope="module")
def outside(host: Host) -> Outside:
    """Outside host 192.0.2.2 beyond the engine's uplink out0 192.0.2.1 (engine default route)."""
    return host.lab.outside(host.engine)


@pytest.fixture(scope="module")
def lan(host: Host) -> Lan:
    """LAN 198.51.100.0/24 behind engine link lan0 (macvlan parent): router .1, LAN host .10."""
    return host.lab.lan(host.engine)


# ------------------------------------------------------------------ multi-host
def _multihost_options(request: pytest.FixtureRequest) -> dict[str, Any]:
    defaults = {"driver_args": None, "driver": True, "live_restore": False, "engine_args": (), "daemon_config": None}
    return _marker_options(request, "multihost", defaults)


def multihost_kinds() -> tuple[str, ...]:
    """The fixed mix (h1 20.10, h2 28.5, h3 20.10); a kind excluded by PYOVERLAY_E2E_ENGINES becomes the other."""
    if set(DEFAULT_KINDS) <= set(SELECTED_KINDS):
        return DEFAULT_KINDS
    return tuple(SELECTED_KINDS[0] for _ in DEFAULT_KINDS)


@pytest.fixture(scope="module")
def multihost(lab_session: LabSession, request: pytest.FixtureRequest) -> Iterator[MultiHost]:
    """A fresh 3-host lab per module: underlay 10.99.0.0/24 (MTU 1400), hosts h1-h3 at .11-.13
    (drivers started before their engines), etcd at .21-.23, outside host .100.

    Options: `pytest.mark.multihost(driver_args=...)` with a dict host name → args or a
    callable HostNode → args (e.g. `tests.lab.overlay_driver_args`).
    """
    opts = _multihost_options(request)
    _require_driver(opts["driver"])
    kinds = multihost_kinds()
    if "28.5" in kinds:
        _require_sid_rootfs(lab_session)
    mh = MultiHost(
        lab_session,
        kinds=kinds,
        driver_args=opts["driver_args"],
        with_driver=opts["driver"],
        live_restore=opts["live_restore"],
        engine_args=opts["engine_args"],
        daemon_config=opts["daemon_config"],
    )
    try:
        yield mh.start()
    finally:
        errors = mh.teardown()
        left = mh.leftovers()
        if errors or any(left.values()):
            raise RuntimeError(f"multihost {mh.lab.label} teardown: errors={errors} leftovers={left}")


@pytest.fixture
def clean_multihost(multihost: MultiHost) -> Iterator[MultiHost]:
    """The module's multi-host lab; after the test every host's containers, networks and volumes are gone."""
    yield multihost
    multihost.clean()
