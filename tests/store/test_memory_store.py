"""Memory-only: the in-memory store's leases follow its injected database clock, so a
unit test on a `FakeClock` can let a lease run out without touching the rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from store_backends import NOW, decl, record

from cronloop.domain.clock import FakeClock
from cronloop.domain.outcome import Outcome
from cronloop.store.memory import MemoryDatabase, MemoryStore


async def test_a_lease_runs_out_on_the_injected_database_clock() -> None:
    clock = FakeClock(NOW)
    db = MemoryDatabase(clock.now)
    mine, theirs = MemoryStore(db, worker_id="w1", lease_s=30), MemoryStore(db, worker_id="w2")
    await mine.sync_tasks([decl("a")])
    [claim] = await mine.claim_due(clock.now(), 1)
    assert await mine.database_now() == NOW
    clock.advance(29)
    assert await theirs.claim_due(clock.now(), 1) == []
    assert await mine.renew([claim]) == set()  # 30 s from now again
    clock.advance(29)
    assert await theirs.claim_due(clock.now(), 1) == []
    clock.advance(2)
    [taken] = await theirs.claim_due(clock.now(), 1)
    assert taken.took_over == claim.run_id
    assert not await mine.complete(claim, record(Outcome.SUCCESS, NOW + timedelta(hours=1)))


async def test_a_naive_datetime_is_refused_and_nothing_is_written() -> None:
    store = MemoryStore()
    await store.sync_tasks([decl("a")])
    [claim] = await store.claim_due(NOW, 1)
    naive = record(Outcome.SUCCESS, NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="naive"):
        await store.complete(claim, naive)
    [state] = await store.status()
    assert state.running and state.runs == 0
