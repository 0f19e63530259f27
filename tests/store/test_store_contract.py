"""The store's contract, run on SQLite and on real MariaDB."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop.domain.outcome import Outcome, TaskStatus
from cronloop.store.sql.claims import (
    RunRecord,
    TaskDeclaration,
    TaskStore,
    TriggerResult,
    UnknownTask,
)
from cronloop.store.sql.tables import runs, tasks

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def decl(name: str, first_run: datetime = NOW, **kw: object) -> TaskDeclaration:
    return TaskDeclaration(
        name=name,
        schedule=str(kw.pop("schedule", "every 60s")),
        timeout_s=10.0,
        first_run=first_run,
        **kw,
    )  # type: ignore[arg-type]


def record(
    outcome: Outcome, next_run: datetime, duration_s: float = 1.0, **kw: object
) -> RunRecord:
    return RunRecord(
        outcome=outcome,
        started=NOW,
        ended=NOW + timedelta(seconds=duration_s),
        duration_s=duration_s,
        next_run=next_run,
        planned_run=next_run,
        **kw,
    )  # type: ignore[arg-type]


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncIterator[TaskStore]:
    store = TaskStore(engine, worker_id="w1", lease_s=30)
    yield store
    await store.close()


async def test_sync_adds_removes_and_reactivates(store: TaskStore) -> None:
    report = await store.sync_tasks([decl("a"), decl("b")])
    assert sorted(report.added) == ["a", "b"]
    report = await store.sync_tasks([decl("a")])
    assert report.removed == ["b"]
    assert {s.name: s.status for s in await store.status()} == {"a": "active", "b": "removed"}
    report = await store.sync_tasks([decl("a"), decl("b")])
    assert report.reactivated == ["b"]
    assert {s.name: s.status for s in await store.status()} == {"a": "active", "b": "active"}


async def test_sync_keeps_operator_pause_and_replans_changed_schedule(store: TaskStore) -> None:
    await store.sync_tasks([decl("a")])
    await store.pause("a")
    later = NOW + timedelta(hours=1)
    report = await store.sync_tasks([decl("a", first_run=later, schedule="every 3600s")])
    assert report.replanned == ["a"]
    [state] = await store.status()
    assert state.status == "paused" and state.next_run == later and state.schedule == "every 3600s"


async def test_sync_disables_a_task_with_a_bad_setting_and_says_why(store: TaskStore) -> None:
    await store.sync_tasks(
        [decl("a"), decl("b", first_run=None, error="params:3: at='9:30' is not HH:MM")]
    )
    states = {s.name: s for s in await store.status()}
    assert states["b"].status == TaskStatus.DISABLED
    assert "9:30" in (states["b"].status_reason or "")
    assert await store.claim_due(NOW, 10) != []  # a is still claimable
    await store.sync_tasks([decl("a"), decl("b")])
    assert {s.name: s.status for s in await store.status()}["b"] == "active"


async def test_claim_takes_only_due_active_unleased_rows(store: TaskStore) -> None:
    await store.sync_tasks(
        [decl("due"), decl("later", first_run=NOW + timedelta(minutes=5)), decl("paused")]
    )
    await store.pause("paused")
    claims = await store.claim_due(NOW, 10)
    assert [c.name for c in claims] == ["due"]
    assert await store.claim_due(NOW, 10) == []  # leased now: nobody else gets it
    other = TaskStore(store.engine, worker_id="w2")
    assert await other.claim_due(NOW + timedelta(minutes=10), 10) != []  # only "later"


async def test_claim_respects_limit_and_order(store: TaskStore) -> None:
    await store.sync_tasks([decl(f"t{i}", first_run=NOW - timedelta(seconds=i)) for i in range(5)])
    claims = await store.claim_due(NOW, 2)
    assert [c.name for c in claims] == ["t4", "t3"]


async def test_complete_writes_stats_and_frees_the_lease(store: TaskStore) -> None:
    await store.sync_tasks([decl("a")])
    for duration in (1.0, 3.0, 2.0):
        [claim] = await store.claim_due(NOW, 1)
        assert await store.complete(claim, record(Outcome.SUCCESS, NOW, duration, message="ok"))
    [s] = await store.status()
    assert (s.runs, s.min_duration_s, s.max_duration_s) == (3, 1.0, 3.0)
    assert s.avg_duration_s == pytest.approx(2.0)
    assert s.latest_duration_s == 2.0 and s.last_message == "ok" and not s.running
    assert s.last_user and s.last_host


async def test_failures_count_in_a_row_and_reset_on_success(store: TaskStore) -> None:
    await store.sync_tasks([decl("a")])
    for outcome in (Outcome.FAILED, Outcome.TIMED_OUT):
        [claim] = await store.claim_due(NOW, 1)
        await store.complete(claim, record(outcome, NOW, error="bad"))
    [s] = await store.status()
    assert s.consecutive_failures == 2 and s.last_error == "bad"
    [claim] = await store.claim_due(NOW, 1)
    assert claim.consecutive_failures == 2
    await store.complete(claim, record(Outcome.INTERRUPTED, NOW))
    assert (await store.status())[0].consecutive_failures == 2  # a shutdown is not a failure
    [claim] = await store.claim_due(NOW, 1)
    await store.complete(claim, record(Outcome.SUCCESS, NOW))
    assert (await store.status())[0].consecutive_failures == 0


async def test_fencing_a_lost_lease_writes_nothing(store: TaskStore) -> None:
    await store.sync_tasks([decl("a")])
    [stale] = await store.claim_due(NOW, 1)
    async with store.engine.begin() as conn:  # the lease expires (e.g. the worker was stopped)
        await conn.execute(update(tasks).values(lease_until=NOW - timedelta(hours=1)))
    other = TaskStore(store.engine, worker_id="w2")
    [fresh] = await other.claim_due(NOW, 1)
    assert fresh.took_over == stale.run_id
    assert await store.renew([stale]) == {stale.run_id}
    assert not await store.complete(stale, record(Outcome.SUCCESS, NOW + timedelta(days=9)))
    [s] = await store.status()
    assert s.running and s.owner == "w2" and s.next_run == NOW
    history = {e.run_id: e.outcome for e in await store.history("a")}
    assert history == {stale.run_id: "abandoned", fresh.run_id: "running"}
    assert await other.complete(fresh, record(Outcome.SUCCESS, NOW + timedelta(minutes=1)))


async def test_renew_extends_by_the_database_clock(store: TaskStore) -> None:
    await store.sync_tasks([decl("a")])
    [claim] = await store.claim_due(NOW, 1)
    async with store.engine.connect() as conn:
        first = (await conn.execute(select(tasks.c.lease_until))).scalar_one()
    db_now = await store.database_now()
    assert timedelta(seconds=25) < first - db_now <= timedelta(seconds=30)
    await asyncio.sleep(0.05)
    assert await store.renew([claim]) == set()
    async with store.engine.connect() as conn:
        second = (await conn.execute(select(tasks.c.lease_until))).scalar_one()
    assert second > first


async def test_reap_closes_history_of_vanished_workers(store: TaskStore) -> None:
    await store.sync_tasks([decl("a")])
    [claim] = await store.claim_due(NOW, 1)
    await store.pause("a")  # nobody will claim it again
    assert await store.reap_abandoned() == 0
    async with store.engine.begin() as conn:
        await conn.execute(update(tasks).values(lease_until=NOW - timedelta(hours=1)))
    assert await store.reap_abandoned() == 1
    [entry] = await store.history()
    assert entry.run_id == claim.run_id and entry.outcome == "abandoned" and entry.ended


async def test_trigger_brings_a_run_forward_without_moving_the_plan(store: TaskStore) -> None:
    later = NOW + timedelta(hours=1)
    await store.sync_tasks([decl("a", first_run=later)])
    assert await store.trigger("a", NOW) == TriggerResult.QUEUED
    [claim] = await store.claim_due(NOW, 1)
    assert claim.triggered and claim.scheduled_for == NOW and claim.planned_run == later
    with pytest.raises(UnknownTask):
        await store.trigger("nope", NOW)
    await store.pause("a")
    assert await store.trigger("a", NOW) == TriggerResult.NOT_ACTIVE


async def test_pause_resume_unknown_and_removed(store: TaskStore) -> None:
    await store.sync_tasks([decl("a"), decl("gone")])
    await store.sync_tasks([decl("a")])
    assert await store.pause("a") == "active"
    assert await store.resume("a") == "paused"
    assert await store.resume("gone") == "removed"
    assert {s.name: s.status for s in await store.status()}["gone"] == "removed"
    with pytest.raises(UnknownTask):
        await store.pause("nope")


async def test_history(store: TaskStore) -> None:
    await store.sync_tasks([decl("a")])
    [claim] = await store.claim_due(NOW, 1)
    await store.complete(claim, record(Outcome.SUCCESS, NOW, message="done", missed=2))
    [entry] = await store.history("a")
    assert (entry.outcome, entry.message, entry.missed, entry.worker) == (
        "success",
        "done",
        2,
        "w1",
    )


async def test_timestamps_keep_microseconds_and_utc(store: TaskStore) -> None:
    precise = datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=UTC)
    await store.sync_tasks([decl("a", first_run=precise)])
    [s] = await store.status()
    assert s.next_run == precise and s.next_run.tzinfo is UTC
    with pytest.raises(Exception, match="naive"):
        await store.sync_tasks([decl("b", first_run=datetime(2026, 3, 2, 9, 0))])


async def test_concurrent_claims_never_share_a_run(store: TaskStore) -> None:
    await store.sync_tasks([decl(f"t{i}") for i in range(40)])
    workers = [TaskStore(store.engine, worker_id=f"w{i}") for i in range(4)]
    batches = await asyncio.gather(*(w.claim_due(NOW, 15) for w in workers))
    # a claim also locks the row after its batch (to tell when it is due), so a worker
    # racing it may skip that row for a moment; the next round takes it
    batches += await asyncio.gather(*(w.claim_due(NOW, 15) for w in workers))
    names = [c.name for batch in batches for c in batch]
    assert len(names) == len(set(names)) == 40
    async with store.engine.connect() as conn:
        started = (await conn.execute(select(runs.c.task_name))).scalars().all()
    assert sorted(started) == sorted(names)


async def test_repeated_timeouts_quarantine_until_resumed(engine: AsyncEngine) -> None:
    store = TaskStore(engine, worker_id="w1", quarantine_timeouts=3)
    await store.sync_tasks([decl("hangs"), decl("fine")])
    for _ in range(2):
        [claim] = await store.claim_due(NOW, 1, names=["hangs"])
        await store.complete(claim, record(Outcome.TIMED_OUT, NOW))
    assert (await store.status(["hangs"]))[0].status == "active"
    [claim] = await store.claim_due(NOW, 1, names=["hangs"])
    await store.complete(claim, record(Outcome.TIMED_OUT, NOW))
    [state] = await store.status(["hangs"])
    assert state.status == "quarantined" and "3 times in a row" in (state.status_reason or "")
    assert [c.name for c in await store.claim_due(NOW, 10)] == ["fine"]
    assert await store.resume("hangs") == "quarantined"
    [state] = await store.status(["hangs"])
    assert state.status == "active"
    [claim] = await store.claim_due(NOW, 1, names=["hangs"])
    await store.complete(claim, record(Outcome.TIMED_OUT, NOW))
    assert (await store.status(["hangs"]))[0].status == "active"  # counters were reset


async def test_next_due_ignores_runs_in_progress(store: TaskStore) -> None:
    """A running task's next_run is its past slot; counting it would make the loop spin."""
    await store.sync_tasks([decl("busy"), decl("later", first_run=NOW + timedelta(minutes=5))])
    assert await store.next_due() == NOW
    [claim] = await store.claim_due(NOW, 1, names=["busy"])
    assert await store.next_due() == NOW + timedelta(minutes=5)
    await store.complete(claim, record(Outcome.SUCCESS, NOW + timedelta(minutes=1)))
    assert await store.next_due() == NOW + timedelta(minutes=1)


async def test_claim_without_takeover_leaves_expired_leases_alone(
    store: TaskStore, engine: AsyncEngine
) -> None:
    """Just after an outage the supervisor claims with takeover=False: an expired lease's
    owner may be recording that run right now."""
    await store.sync_tasks([decl("a"), decl("b")])
    await store.claim_due(NOW, 1, names=["a"])
    expired = datetime.now(UTC) - timedelta(minutes=5)
    async with engine.begin() as conn:
        await conn.execute(update(tasks).where(tasks.c.name == "a").values(lease_until=expired))
    assert [c.name for c in await store.claim_due(NOW, 10, takeover=False)] == ["b"]
    [taken] = await store.claim_due(NOW, 10)
    assert taken.name == "a" and taken.took_over is not None
