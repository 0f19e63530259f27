"""The start-up clock check (`store.sql.clocks`, `cli.bootstrap.check_clocks`) on SQLite
and a real MariaDB server; the local clock is injected, the server's is its own.

A single server is one clock: never a skew, whatever `max_clock_skew_s`. This host's
clock against the database's is measured with bounds that hold whatever the round trip.
Several nodes (a Galera cluster with one clock shifted) are `tests/galera/test_clock_skew.py`.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop.cli.bootstrap import check_clocks
from cronloop.config.model import Settings
from cronloop.store.sql.clocks import ClockReport, NodeClock, describe_skew, measure_clocks


@pytest.mark.mariadb
async def test_one_server_is_one_clock_and_its_offset_is_bounded(mariadb_database: str) -> None:
    from cronloop.store.sql.engine import create_engine

    engine = create_engine(Settings(database_url=mariadb_database))
    try:
        report = await measure_clocks(engine)
        shifted = await measure_clocks(engine, local=lambda: time.time() - 5.0)
    finally:
        await engine.dispose()
    [node] = report.nodes
    assert node.low_s <= 0.05 and node.high_s >= -0.05  # the same host's clock
    assert node.high_s - node.low_s < 1.0
    assert report.skew_at_least_s() == 0.0 and describe_skew(report, 0.0) is None
    assert 4.9 < shifted.local_offset_at_least_s() < 5.1  # this host 5 s behind


async def test_sqlite_is_not_measured(engine: AsyncEngine, db_url: str) -> None:
    await check_clocks(engine, Settings(database_url=db_url, max_clock_skew_s=0.0))


def report(*offsets_s: float, width_s: float = 0.002) -> ClockReport:
    nodes = [
        NodeClock(f"n{i}:3306", o - width_s / 2, o + width_s / 2) for i, o in enumerate(offsets_s)
    ]
    return ClockReport(tuple(nodes))


def test_the_skew_is_the_widest_disagreement_less_the_noise() -> None:
    r = report(0.0, 3.0, -0.5)
    assert r.skew_at_least_s() == pytest.approx(3.5 - 0.002)
    assert r.skew_at_most_s() == pytest.approx(3.5 + 0.002)
    problem = describe_skew(r, 1.0)
    assert problem is not None
    assert "n2:3306 and n1:3306" in problem and "at least 3.498 s" in problem
    assert "max_clock_skew_s = 1 s" in problem
    assert describe_skew(r, 4.0) is None


def test_noise_wider_than_the_gap_is_no_skew() -> None:
    assert report(0.0, 0.3, width_s=1.0).skew_at_least_s() == 0.0
    assert describe_skew(report(0.0, 0.3, width_s=1.0), 0.0) is None
