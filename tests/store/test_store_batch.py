"""Batched claims and recordings, on SQLite and on real MariaDB: what one statement per
batch must still guarantee (fencing per run, exact statistics, the next due time)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from test_store_contract import NOW, decl, record

from cronloop.domain.outcome import Outcome
from cronloop.store.sql.batch import _inline
from cronloop.store.sql.claims import TaskStore
from cronloop.store.sql.tables import runs, tasks


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[TaskStore]:
    store = TaskStore(engine, worker_id="w1", lease_s=30)
    yield store
    await store.close()


async def _rows(store: TaskStore) -> dict[str, object]:
    async with store.engine.connect() as conn:
        return {r.name: r for r in await conn.execute(select(tasks))}


async def test_claim_next_says_when_the_next_run_is_due(store: TaskStore) -> None:
    later = NOW + timedelta(seconds=7)
    await store.sync_tasks([decl("a"), decl("b"), decl("c", first_run=later)])
    batch = await store.claim_next(NOW, 10)
    assert sorted(c.name for c in batch.claims) == ["a", "b"]
    assert batch.next_due == later  # the first row not taken
    batch = await store.claim_next(NOW, 10)
    assert batch.claims == [] and batch.next_due == later
    assert (await store.claim_next(later, 10)).next_due is None  # nothing else is free


async def test_a_full_batch_says_more_is_due(store: TaskStore) -> None:
    await store.sync_tasks([decl(f"t{i}") for i in range(5)])
    batch = await store.claim_next(NOW, 2)
    assert len(batch.claims) == 2 and batch.next_due == NOW  # more due right now


async def test_many_runs_recorded_at_once_each_with_its_own_values(store: TaskStore) -> None:
    await store.sync_tasks([decl(f"t{i}") for i in range(30)])
    claims = await store.claim_due(NOW, 30)
    ended = [
        (
            c,
            record(
                Outcome.SUCCESS, NOW + timedelta(minutes=i), duration_s=i + 1.5, message=f"m{i}"
            ),
            False,
        )
        for i, c in enumerate(sorted(claims, key=lambda c: c.name))
    ]
    assert await store.complete_many(ended) == [True] * 30
    rows = await _rows(store)
    for i, (claim, rec, _) in enumerate(ended):
        row = rows[claim.name]
        assert row.next_run == rec.next_run and row.last_message == f"m{i}"  # type: ignore[attr-defined]
        assert row.run_count == 1 and row.latest_duration_s == i + 1.5  # type: ignore[attr-defined]
        assert row.lease_token is None  # type: ignore[attr-defined]
    async with store.engine.connect() as conn:
        history = {r.run_id: r for r in await conn.execute(select(runs))}
    assert all(history[c.run_id].outcome == "success" for c, _, _ in ended)
    assert history[ended[3][0].run_id].duration_s == 4.5


async def test_statistics_follow_the_runs(store: TaskStore) -> None:
    await store.sync_tasks([decl("a")])
    for d, outcome in ((2.0, Outcome.SUCCESS), (4.0, Outcome.FAILED), (1.0, Outcome.TIMED_OUT)):
        [claim] = await store.claim_due(NOW + timedelta(days=1), 1)
        assert await store.complete_many([(claim, record(outcome, NOW, duration_s=d), False)])
    row = (await _rows(store))["a"]
    assert (row.run_count, row.min_duration_s, row.max_duration_s) == (3, 1.0, 4.0)  # type: ignore[attr-defined]
    assert row.avg_duration_s == pytest.approx(7 / 3, rel=1e-5)  # type: ignore[attr-defined]
    assert (row.consecutive_failures, row.consecutive_timeouts) == (2, 1)  # type: ignore[attr-defined]
    [claim] = await store.claim_due(NOW + timedelta(days=1), 1)
    await store.complete_many([(claim, record(Outcome.INTERRUPTED, NOW, duration_s=9), False)])
    row = (await _rows(store))["a"]
    assert row.run_count == 3 and row.max_duration_s == 4.0  # a shutdown's cut is not a run  # type: ignore[attr-defined]


async def test_a_lost_lease_in_a_batch_fails_only_that_run(store: TaskStore) -> None:
    await store.sync_tasks([decl(f"t{i}") for i in range(4)])
    claims = sorted(await store.claim_due(NOW, 4), key=lambda c: c.name)
    lost = claims[1]
    async with store.engine.begin() as conn:  # another worker took t1 over
        await conn.execute(
            update(tasks).where(tasks.c.id == lost.task_id).values(lease_token="theirs")
        )
    results = await store.complete_many(
        [(c, record(Outcome.SUCCESS, NOW + timedelta(hours=1)), False) for c in claims]
    )
    assert results == [True, False, True, True]
    rows = await _rows(store)
    assert rows["t1"].lease_token == "theirs" and rows["t1"].run_count == 0  # type: ignore[attr-defined]
    assert rows["t2"].run_count == 1  # type: ignore[attr-defined]


def test_only_keys_cronloop_makes_are_inlined() -> None:
    assert _inline(42) == "42" and _inline("ab12-3_x") == "'ab12-3_x'"
    for bad in ("x' OR '1'='1", "a b", "", True, 1.5, None):
        with pytest.raises(ValueError):
            _inline(bad)


async def test_interrupted_and_finished_runs_recorded_together(store: TaskStore) -> None:
    """A shutdown ends runs of both kinds at once; an interrupted run sets no statistics,
    so the two kinds cannot share one statement."""
    await store.sync_tasks([decl(f"t{i}") for i in range(4)])
    claims = sorted(await store.claim_due(NOW, 4), key=lambda c: c.name)
    outcomes = [Outcome.SUCCESS, Outcome.INTERRUPTED, Outcome.FAILED, Outcome.INTERRUPTED]
    later = NOW + timedelta(hours=1)
    ended = [(c, record(o, later), False) for c, o in zip(claims, outcomes, strict=True)]
    assert await store.complete_many(ended) == [True] * 4
    rows = await _rows(store)
    assert [rows[f"t{i}"].run_count for i in range(4)] == [1, 0, 1, 0]  # type: ignore[attr-defined]
    assert all(rows[f"t{i}"].lease_token is None for i in range(4))  # type: ignore[attr-defined]
