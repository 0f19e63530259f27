"""Leases on a real Galera cluster whose nodes' clocks disagree (issue 11, item 4).

A 2-node cluster of its own, node 1's `mariadbd` under libfaketime 4 s ahead (its wall
clock only: Galera's timers keep the true monotonic clock). A lease stamped by node 0
looks 4 s older to a worker on node 1. Shown here with the real stores and the real CLI:
without an allowance that worker takes a live lease over; with `max_clock_skew_s` above
the skew it does not, and workers on both nodes run a steady load with no duplicate; a
worker started with the default allowance (1 s) refuses to start (exit 78), on either
node, naming both nodes and the skew.
"""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cronloop.domain.records import TaskDeclaration
from cronloop.store.sql.store import SqlStore
from tests.support.cli import migrate, run_cronloop
from tests.support.env import base_env
from tests.support.galera import Cluster, galera_cluster, need_galera
from tests.support.worker import wait_for_total

from .test_galera_workers import START_TIMEOUT_S, make_exec_table, rows, start_workers, stop

SHIFT_S = 4.0
NOW = datetime(2026, 1, 1, tzinfo=UTC)  # every task is due: first_run long past


def decl(name: str) -> TaskDeclaration:
    return TaskDeclaration(name=name, schedule="every 60s", timeout_s=10.0, first_run=NOW)


@pytest.fixture(scope="module")
def skewed() -> Iterator[Cluster]:
    need_galera()
    with galera_cluster(2, faketime={1: f"+{SHIFT_S:g}s"}) as cluster:
        yield cluster


@pytest.fixture
def skewed_db(skewed: Cluster) -> Iterator[str]:
    with skewed.database("cronloop_skew") as name:
        yield name


@pytest.fixture
async def engines(
    skewed: Cluster, skewed_db: str, tmp_path: Path
) -> AsyncIterator[list[AsyncEngine]]:
    migrate(skewed.url(0, skewed_db), tmp_path)
    # wsrep_sync_wait: a read on one node sees what the other just committed
    args = {"init_command": "SET SESSION wsrep_sync_wait = 1"}
    made = [create_async_engine(skewed.url(i, skewed_db), connect_args=args) for i in (0, 1)]
    try:
        yield made
    finally:
        for engine in made:
            await engine.dispose()


async def test_the_shift_is_real(engines: list[AsyncEngine]) -> None:
    from cronloop.store.sql.clocks import measure_clocks

    report = await measure_clocks(engines[0])
    assert len(report.nodes) == 2, report
    assert SHIFT_S - 0.5 < report.skew_at_least_s() <= report.skew_at_most_s() < SHIFT_S + 0.5


async def test_without_an_allowance_a_live_lease_is_taken_over(engines: list[AsyncEngine]) -> None:
    """The hazard: node 0 stamps a 3 s lease; node 1's clock says it ended 1 s ago."""
    owner = SqlStore(engines[0], worker_id="w0", lease_s=3.0)
    await owner.sync_tasks([decl("a")])
    [claim] = await owner.claim_due(NOW, 1)
    blind = SqlStore(engines[1], worker_id="w1", lease_s=3.0, max_clock_skew_s=0.0)
    [stolen] = await blind.claim_due(NOW, 1)
    assert stolen.took_over == claim.run_id  # while its owner may run it for 2 more seconds


async def test_with_an_allowance_above_the_skew_it_is_not(engines: list[AsyncEngine]) -> None:
    owner = SqlStore(engines[0], worker_id="w0", lease_s=3.0)
    await owner.sync_tasks([decl("a")])
    [claim] = await owner.claim_due(NOW, 1)
    careful = SqlStore(engines[1], worker_id="w1", lease_s=3.0, max_clock_skew_s=SHIFT_S + 1)
    try:
        assert await careful.claim_due(NOW, 1) == []
        assert await careful.next_due() is None
        assert await careful.reap_abandoned() == 0
        assert await owner.renew([claim]) == set()
    finally:
        await careful.close()  # its idle probe's kept connection


@pytest.mark.parametrize("node", [0, 1])
def test_the_default_allowance_refuses_to_start(
    skewed: Cluster, skewed_db: str, tmp_path: Path, foreign_tasks_off: dict[str, str], node: int
) -> None:
    migrate(skewed.url(0, skewed_db), tmp_path)
    env = {**base_env(), **foreign_tasks_off}
    result = run_cronloop(
        ["run", "--max_lifetime=0", f"--database_url={skewed.url(node, skewed_db)}"],
        env,
        tmp_path,
        timeout=60,
    )
    assert result.rc == 78, result
    ports = [str(n.sql_port) for n in skewed.nodes]
    assert all(port in result.err for port in ports), result.err
    assert "max_clock_skew_s = 1 s" in result.err and "NTP" in result.err


def test_workers_on_both_nodes_with_the_allowance_run_once_each(
    skewed: Cluster, skewed_db: str, tmp_path: Path, foreign_tasks_off: dict[str, str]
) -> None:
    migrate(skewed.url(0, skewed_db), tmp_path)
    make_exec_table(skewed, skewed_db)
    tasks = 10
    workers = start_workers(
        skewed,
        skewed_db,
        tmp_path,
        foreign_tasks_off,
        f"--max_clock_skew_s={SHIFT_S + 1:g}",
        chaos={"CHAOS_RACE": f"{tasks}:1"},
    )
    try:
        wait_for_total(workers, "worker started", 2, START_TIMEOUT_S)
        wait_for_total(workers, "run finished", 6 * tasks, 60.0)
        workers[0].signal(signal.SIGKILL)  # its leases must be taken over, late but surely
        workers[0].wait(10)
        mark = workers[1].mark()
        before = len(workers[1].find("run finished"))
        wait_for_total(workers[1:], "run finished", before + 4 * tasks, 60.0)
        # every task runs on after the kill, those node 0 held included (after their lease)
        after = {e.get("task") for e in workers[1].find("run finished", since=mark)}
        assert len(after) == tasks, sorted(map(str, after))
        errors = set(workers[1].errors())
        assert not errors, errors
    finally:
        stop([w for w in workers if w.alive()])
    executions = rows(skewed, skewed_db, "SELECT task, scheduled_for FROM cronloop_chaos_exec")
    per_slot = Counter((task, when) for task, when in executions)
    duplicates = {slot: n for slot, n in per_slot.items() if n > 1}
    assert not duplicates, f"duplicate runs: {duplicates}"
