import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.plugin import Plugin, plugin_fixture, start_plugin, stop_plugin

NEEDS_ROOT = ("protocol", "netns", "e2e", "cluster")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in NEEDS_ROOT:
            item.add_marker(pytest.mark.root)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason=f"the {tier} tier needs root (network namespaces)"))


@pytest.fixture
def plugin(tmp_path: Path) -> Iterator[Plugin]:
    """A fresh driver in a fresh namespace, for tests that need a clean slate."""
    yield from plugin_fixture(tmp_path / "plugin")


@pytest.fixture
def make_plugin(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Plugin]]:
    """Start drivers with extra environment (fault injection); all stopped afterwards."""
    made: list[Plugin] = []

    def make(env: dict[str, str]) -> Plugin:
        made.append(start_plugin(tmp_path / f"plugin{len(made)}", env))
        return made[-1]

    yield make
    for p in made:
        stop_plugin(p)


@pytest.fixture(scope="module")
def shared_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plugin]:
    """One driver per test module, for tests that only add and remove their own objects."""
    yield from plugin_fixture(tmp_path_factory.mktemp("plugin"))
