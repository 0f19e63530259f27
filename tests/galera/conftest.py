"""Fixtures for the Galera tests: one real 3-node cluster per session, a database per test.

The cluster (`tests.support.galera`) boots once, in about 15 s, behind its gate: skipped
where it cannot boot, failed under `CRONLOOP_REQUIRE_GALERA=1` (CI). Each test gets a new
empty database on it, dropped afterwards, and starts its workers one per node.

This directory is a package so that this conftest is not imported as a bare `conftest`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.galera import Cluster, galera_cluster, need_galera


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "galera" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.galera)


@pytest.fixture(scope="session")
def galera() -> Iterator[Cluster]:
    """Three nodes, for the whole session."""
    need_galera()
    with galera_cluster(3) as cluster:
        yield cluster


@pytest.fixture
def galera_db(galera: Cluster) -> Iterator[str]:
    """The name of a new empty database on the cluster."""
    with galera.database() as name:
        yield name
