"""The job queue's contract (`JobStore`) over every store: memory, SQLite, MariaDB.

Each test is one rule of the contract in `cronloop.store.interface.JobStore`: what is
acquired (due, kinds with free slots, priority, takeover of expired leases only), the
fence on every write, unique keys, the operator verbs.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from store_backends import NOW, Backend

from cronloop import enqueue
from cronloop.domain.jobs import JobState, UnknownJob
from cronloop.store.interface import JobStore

LATER = NOW + timedelta(minutes=5)
ALL = {"hook": None, "report": None}


def jobs_of(backend: Backend, worker_id: str = "w1", lease_s: float = 30.0) -> JobStore:
    return cast(JobStore, backend.store(worker_id, lease_s=lease_s))


async def test_an_enqueued_job_is_acquired_once_with_its_args(backend: Backend) -> None:
    q = jobs_of(backend)
    job_id = await q.enqueue_job("hook", {"url": "https://x", "n": 1}, run_at=NOW)
    [claim] = await q.acquire_jobs(NOW, 10, ALL)
    assert (claim.job_id, claim.kind, claim.args) == (job_id, "hook", {"url": "https://x", "n": 1})
    assert claim.attempts == 1 and not claim.took_over
    assert await q.acquire_jobs(NOW, 10, ALL) == []
    assert await jobs_of(backend, "w2").acquire_jobs(NOW, 10, ALL) == []
    assert (await q.job_info(job_id)).state == JobState.RUNNING


async def test_a_delayed_job_waits_for_its_time(backend: Backend) -> None:
    q = jobs_of(backend)
    await q.enqueue_job("hook", {}, run_at=LATER)
    assert await q.acquire_jobs(NOW, 10, ALL) == []
    assert len(await q.acquire_jobs(LATER, 10, ALL)) == 1


async def test_higher_priority_first_then_earliest(backend: Backend) -> None:
    q = jobs_of(backend)
    low = await q.enqueue_job("hook", {}, run_at=NOW - timedelta(minutes=1))
    high = await q.enqueue_job("hook", {}, run_at=NOW, priority=5)
    older = await q.enqueue_job("hook", {}, run_at=NOW - timedelta(minutes=2))
    got = [c.job_id for c in await q.acquire_jobs(NOW, 2, ALL)]
    assert got == [high, older]
    assert [c.job_id for c in await q.acquire_jobs(NOW, 2, ALL)] == [low]


async def test_only_kinds_with_free_slots_and_at_most_their_slots(backend: Backend) -> None:
    q = jobs_of(backend)
    for _ in range(3):
        await q.enqueue_job("hook", {}, run_at=NOW)
    await q.enqueue_job("report", {}, run_at=NOW)
    await q.enqueue_job("unknown", {}, run_at=NOW)
    got = await q.acquire_jobs(NOW, 10, {"hook": 2, "report": 0})
    assert [c.kind for c in got] == ["hook", "hook"]
    got = await q.acquire_jobs(NOW, 10, {"hook": None, "report": None})
    assert sorted(c.kind for c in got) == ["hook", "report"]


async def test_a_unique_key_is_held_while_planned_or_running(backend: Backend) -> None:
    q = jobs_of(backend)
    first = await q.enqueue_job("hook", {"a": 1}, run_at=NOW, unique_key="ticket-7")
    assert await q.enqueue_job("hook", {"a": 2}, run_at=NOW, unique_key="ticket-7") == first
    other_kind = await q.enqueue_job("report", {}, run_at=NOW, unique_key="ticket-7")
    assert other_kind != first
    [claim] = await q.acquire_jobs(NOW, 10, {"hook": None})
    assert await q.enqueue_job("hook", {}, run_at=NOW, unique_key="ticket-7") == first
    assert await q.complete_job(claim)
    again = await q.enqueue_job("hook", {}, run_at=NOW, unique_key="ticket-7")
    assert again != first


async def test_complete_is_fenced_by_the_lease(backend: Backend) -> None:
    q = jobs_of(backend, lease_s=30.0)
    job_id = await q.enqueue_job("hook", {}, run_at=NOW)
    [old] = await q.acquire_jobs(NOW, 10, ALL)
    await backend.expire_job_leases()
    [new] = await jobs_of(backend, "w2").acquire_jobs(NOW, 10, ALL)
    assert new.job_id == job_id and new.took_over and new.attempts == 2
    assert await q.renew_jobs([old.claim]) == {old.run_id}
    assert not await q.complete_job(old)
    assert not await q.fail_job(old, "late", None)
    assert not await q.release_job(old)
    assert await jobs_of(backend, "w2").renew_jobs([new.claim]) == set()
    assert (await q.job_info(job_id)).state == JobState.RUNNING
    assert await q.complete_job(new)
    info = await q.job_info(job_id)
    assert info.state == JobState.DONE and info.finished is not None


async def test_a_live_lease_is_not_taken_over(backend: Backend) -> None:
    q = jobs_of(backend)
    await q.enqueue_job("hook", {}, run_at=NOW)
    assert len(await q.acquire_jobs(NOW, 10, ALL)) == 1
    assert await jobs_of(backend, "w2").acquire_jobs(LATER, 10, ALL) == []


async def test_fail_retries_later_or_ends_in_error(backend: Backend) -> None:
    q = jobs_of(backend)
    job_id = await q.enqueue_job("hook", {}, run_at=NOW)
    [claim] = await q.acquire_jobs(NOW, 10, ALL)
    assert await q.fail_job(claim, "ValueError: boom", LATER)
    info = await q.job_info(job_id)
    assert (info.state, info.run_at, info.last_error) == (
        JobState.PLANNED,
        LATER,
        "ValueError: boom",
    )
    assert await q.acquire_jobs(NOW, 10, ALL) == []
    [claim] = await q.acquire_jobs(LATER, 10, ALL)
    assert claim.attempts == 2
    assert await q.fail_job(claim, "for good", None)
    info = await q.job_info(job_id)
    assert (info.state, info.last_error, info.attempts) == (JobState.ERROR, "for good", 2)
    assert await q.acquire_jobs(LATER, 10, ALL) == []


async def test_release_gives_the_attempt_back(backend: Backend) -> None:
    q = jobs_of(backend)
    job_id = await q.enqueue_job("hook", {}, run_at=NOW)
    [claim] = await q.acquire_jobs(NOW, 10, ALL)
    assert await q.release_job(claim)
    info = await q.job_info(job_id)
    assert (info.state, info.attempts) == (JobState.PLANNED, 0)
    [again] = await q.acquire_jobs(NOW, 10, ALL)
    assert again.attempts == 1


async def test_cancel_only_planned_jobs(backend: Backend) -> None:
    q = jobs_of(backend)
    planned = await q.enqueue_job("hook", {}, run_at=LATER)
    running = await q.enqueue_job("report", {}, run_at=NOW)
    await q.acquire_jobs(NOW, 10, {"report": None})
    assert await q.cancel_job(planned) == JobState.PLANNED
    assert await q.cancel_job(running) == JobState.RUNNING
    assert (await q.job_info(planned)).state == JobState.CANCELLED
    assert (await q.job_info(running)).state == JobState.RUNNING
    assert await q.acquire_jobs(LATER, 10, ALL) == []
    with pytest.raises(UnknownJob):
        await q.cancel_job(999_999)


async def test_retry_plans_an_error_or_cancelled_job_again(backend: Backend) -> None:
    q = jobs_of(backend)
    job_id = await q.enqueue_job("hook", {}, run_at=NOW, unique_key="k")
    [claim] = await q.acquire_jobs(NOW, 10, ALL)
    await q.fail_job(claim, "boom", None)
    assert await q.retry_job(job_id, LATER) == JobState.ERROR
    info = await q.job_info(job_id)
    assert (info.state, info.attempts, info.run_at, info.finished) == (
        JobState.PLANNED,
        0,
        LATER,
        None,
    )
    assert await q.retry_job(job_id, LATER) == JobState.PLANNED  # unchanged
    assert await q.cancel_job(job_id) == JobState.PLANNED
    await q.enqueue_job("hook", {}, run_at=NOW, unique_key="k")  # the key is free again
    with pytest.raises(ValueError, match="unique key"):
        await q.retry_job(job_id, LATER)
    with pytest.raises(UnknownJob):
        await q.retry_job(999_999, LATER)


async def test_counts_by_kind_and_state_with_the_oldest(backend: Backend) -> None:
    q = jobs_of(backend)
    await q.enqueue_job("hook", {}, run_at=NOW)
    await q.enqueue_job("hook", {}, run_at=NOW - timedelta(hours=1))
    await q.enqueue_job("report", {}, run_at=LATER)
    counts = {(c.kind, c.state): (c.count, c.oldest) for c in await q.job_counts()}
    assert counts == {
        ("hook", JobState.PLANNED): (2, NOW - timedelta(hours=1)),
        ("report", JobState.PLANNED): (1, LATER),
    }


async def test_two_workers_never_get_the_same_job(backend: Backend) -> None:
    q1, q2 = jobs_of(backend, "w1"), jobs_of(backend, "w2")
    ids = {await q1.enqueue_job("hook", {"i": i}, run_at=NOW) for i in range(40)}
    got: list[int] = []
    for _ in range(5):
        a, b = await asyncio.gather(q1.acquire_jobs(NOW, 7, ALL), q2.acquire_jobs(NOW, 7, ALL))
        got.extend(c.job_id for c in [*a, *b])
    rest = await q1.acquire_jobs(NOW, 100, ALL)
    got.extend(c.job_id for c in rest)
    assert sorted(got) == sorted(ids)


async def test_bad_values_are_refused_naming_the_field(backend: Backend) -> None:
    q = jobs_of(backend)
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        await q.enqueue_job("hook", {"when": object()})
    with pytest.raises(ValueError, match="args must be a JSON object"):
        await q.enqueue_job("hook", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="naive"):
        await q.enqueue_job("hook", {}, run_at=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="job name"):
        await q.enqueue_job("x" * 191, {})
    with pytest.raises(ValueError, match="max_retries"):
        await q.enqueue_job("hook", {}, max_retries=-1)
    assert await q.job_counts() == []


async def test_enqueue_joins_the_callers_transaction(backend: Backend) -> None:
    engine = backend.engine_or_none()
    if engine is None:
        pytest.skip("a transaction of the caller's needs a database")
    q = jobs_of(backend)
    sessions = async_sessionmaker(engine, class_=AsyncSession)
    async with sessions() as session, session.begin():
        await enqueue(session, "hook", {"n": 1}, run_at=NOW)
        await session.rollback()
    assert await q.job_counts() == []
    async with sessions() as session, session.begin():
        kept = await enqueue(session, "hook", {"n": 2}, run_at=NOW, unique_key="u")
        assert await enqueue(session, "hook", {"n": 3}, run_at=NOW, unique_key="u") == kept
    assert await enqueue(engine, "hook", {}, run_at=NOW, unique_key="u") == kept
    assert await enqueue(sessions, "hook", {}, run_at=NOW) != kept
    async with engine.connect() as conn:
        await enqueue(conn, "hook", {}, run_at=NOW)
        await conn.rollback()
    [count] = await q.job_counts()
    assert count.count == 2
    [first, _] = await q.acquire_jobs(NOW, 10, ALL)
    assert first.args == {"n": 2}


async def test_prune_deletes_old_done_and_cancelled_jobs_only(backend: Backend) -> None:
    q = jobs_of(backend)
    done = await q.enqueue_job("hook", {}, run_at=NOW)
    failed = await q.enqueue_job("report", {}, run_at=NOW)
    cancelled = await q.enqueue_job("hook", {}, run_at=LATER)
    waiting = await q.enqueue_job("hook", {}, run_at=LATER)
    for claim in await q.acquire_jobs(NOW, 10, ALL):
        if claim.kind == "hook":
            await q.complete_job(claim)
        else:
            await q.fail_job(claim, "boom", None)
    await q.cancel_job(cancelled)
    finished = (await q.job_info(done)).finished
    assert finished is not None
    assert await q.prune_jobs(finished - timedelta(hours=1), 100) == 0
    assert await q.prune_jobs(finished + timedelta(hours=1), 1) == 1
    assert await q.prune_jobs(finished + timedelta(hours=1), 100) == 1
    for gone in (done, cancelled):
        with pytest.raises(UnknownJob):
            await q.job_info(gone)
    assert {(await q.job_info(i)).state for i in (failed, waiting)} == {
        JobState.ERROR,
        JobState.PLANNED,
    }


async def test_no_takeover_leaves_expired_leases_alone(backend: Backend) -> None:
    q = jobs_of(backend)
    await q.enqueue_job("hook", {}, run_at=NOW)
    [old] = await q.acquire_jobs(NOW, 10, ALL)
    await backend.expire_job_leases()
    other = jobs_of(backend, "w2")
    assert await other.acquire_jobs(NOW, 10, ALL, takeover=False) == []
    assert await q.complete_job(old)  # its owner recorded it in time
    assert await other.acquire_jobs(NOW, 10, ALL) == []


async def test_complete_many_lands_only_the_attempts_still_held(backend: Backend) -> None:
    q = jobs_of(backend)
    ids = [await q.enqueue_job("hook", {"i": i}, run_at=NOW) for i in range(3)]
    claims = await q.acquire_jobs(NOW, 10, ALL)
    assert await q.release_job(claims[1])  # no longer held by this claim
    assert await q.complete_jobs(claims) == [True, False, True]
    states = [(await q.job_info(i)).state for i in ids]
    assert states == [JobState.DONE, JobState.PLANNED, JobState.DONE]
    assert await q.complete_jobs([]) == []


def striking(backend: Backend, worker_id: str, strikes: int = 2) -> JobStore:
    return cast(JobStore, backend.store(worker_id, quarantine_strikes=strikes))


async def test_a_job_that_keeps_losing_its_worker_is_quarantined(backend: Backend) -> None:
    """Each takeover is a strike (the attempt's worker was lost); the takeover that would
    be the `quarantine_strikes`-th quarantines the job instead: never run again until an
    operator's `retry`, which resets the strikes."""
    job_id = await striking(backend, "w1").enqueue_job("hook", {}, run_at=NOW)
    other = await striking(backend, "w1").enqueue_job("report", {}, run_at=NOW)
    assert len(await striking(backend, "w1").acquire_jobs(NOW, 10, ALL)) == 2
    await backend.expire_job_leases()  # w1 was killed
    second = await striking(backend, "w2").acquire_jobs(NOW, 10, {"hook": None})
    assert [(c.job_id, c.took_over, c.attempts) for c in second] == [(job_id, True, 2)]
    assert (await striking(backend, "w2").job_info(job_id)).strikes == 1
    await backend.expire_job_leases()  # w2 was killed too
    assert await striking(backend, "w3").acquire_jobs(NOW, 10, {"hook": None}) == []
    info = await striking(backend, "w3").job_info(job_id)
    assert (info.state, info.strikes, info.attempts) == (JobState.QUARANTINED, 2, 2)
    assert info.last_error is not None and "2 strikes" in info.last_error
    assert "cronloop retry" in info.last_error
    counts = {(c.kind, c.state) for c in await striking(backend, "w3").job_counts()}
    assert ("hook", JobState.QUARANTINED) in counts
    assert await striking(backend, "w3").acquire_jobs(LATER, 10, ALL) != []  # `report` only
    assert (await striking(backend, "w3").job_info(other)).strikes == 1
    assert await striking(backend, "w3").retry_job(job_id, NOW) == JobState.QUARANTINED
    info = await striking(backend, "w3").job_info(job_id)
    assert (info.state, info.strikes, info.attempts) == (JobState.PLANNED, 0, 0)
    [again] = await striking(backend, "w3").acquire_jobs(NOW, 10, {"hook": None})
    assert again.job_id == job_id and not again.took_over


async def test_without_quarantine_strikes_a_takeover_only_counts(backend: Backend) -> None:
    q = striking(backend, "w1", strikes=0)
    job_id = await q.enqueue_job("hook", {}, run_at=NOW)
    for attempt in range(1, 5):
        [claim] = await q.acquire_jobs(NOW, 10, ALL)
        assert claim.attempts == attempt
        await backend.expire_job_leases()
    assert (await q.job_info(job_id)).strikes == 3


async def test_a_released_or_failed_attempt_is_no_strike(backend: Backend) -> None:
    q = striking(backend, "w1", strikes=1)
    job_id = await q.enqueue_job("hook", {}, run_at=NOW)
    [claim] = await q.acquire_jobs(NOW, 10, ALL)
    assert await q.release_job(claim)
    [claim] = await q.acquire_jobs(NOW, 10, ALL)
    assert await q.fail_job(claim, "boom", NOW)
    [claim] = await q.acquire_jobs(NOW, 10, ALL)
    info = await q.job_info(job_id)
    assert (info.state, info.strikes) == (JobState.RUNNING, 0)


async def test_suspects_are_leased_at_most_as_many_as_asked(backend: Backend) -> None:
    """A suspect (being taken over, or struck before) is counted apart: the job side asks
    for one at a time, so no two run together on a worker and the bystanders of a poison
    job's crash are not taken over with it."""
    q = striking(backend, "w1", strikes=3)
    ids = [await q.enqueue_job("hook", {"i": i}, run_at=NOW) for i in range(3)]
    assert len(await q.acquire_jobs(NOW, 10, ALL)) == 3
    await backend.expire_job_leases()  # three attempts lost with their worker
    fresh = await q.enqueue_job("hook", {"i": 3}, run_at=NOW)
    got = await striking(backend, "w2", strikes=3).acquire_jobs(NOW, 10, ALL, suspects=1)
    assert [(c.job_id, c.took_over, c.strikes, c.suspect) for c in got] == [
        (ids[0], True, 1, True),
        (fresh, False, 0, False),
    ]
    none = await striking(backend, "w2", strikes=3).acquire_jobs(NOW, 10, ALL, suspects=0)
    assert none == []
    rest = await striking(backend, "w3", strikes=3).acquire_jobs(NOW, 10, ALL)
    assert sorted(c.job_id for c in rest) == ids[1:] and all(c.suspect for c in rest)
