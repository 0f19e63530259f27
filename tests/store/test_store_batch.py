"""Many runs claimed and recorded at once, on every store: what one statement per batch
(in the SQL store) must still guarantee: fencing per run, exact statistics per run."""

from __future__ import annotations

from datetime import timedelta

import pytest
from store_backends import NOW, Backend, decl, record

from cronloop.domain.outcome import Outcome
from cronloop.store import Store


async def test_many_runs_recorded_at_once_each_with_its_own_values(
    store: Store, backend: Backend
) -> None:
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
    for i, (claim, rec, _) in enumerate(ended):
        row = await backend.task_row(claim.name)
        assert row["next_run"] == rec.next_run and row["last_message"] == f"m{i}"
        assert row["run_count"] == 1 and row["latest_duration_s"] == i + 1.5
        assert row["lease_token"] is None
    history = await backend.run_rows()
    assert all(history[c.run_id]["outcome"] == "success" for c, _, _ in ended)
    assert history[ended[3][0].run_id]["duration_s"] == 4.5


async def test_more_runs_than_one_statement_carries(store: Store) -> None:
    await store.sync_tasks([decl(f"t{i:03}") for i in range(450)])
    claims = await store.claim_due(NOW, 450)
    later = NOW + timedelta(hours=1)
    assert await store.complete_many([(c, record(Outcome.SUCCESS, later), False) for c in claims])
    assert all(s.runs == 1 and s.next_run == later for s in await store.status())


async def test_statistics_follow_the_runs(store: Store, backend: Backend) -> None:
    await store.sync_tasks([decl("a")])
    for d, outcome in ((2.0, Outcome.SUCCESS), (4.0, Outcome.FAILED), (1.0, Outcome.TIMED_OUT)):
        [claim] = await store.claim_due(NOW + timedelta(days=1), 1)
        assert await store.complete_many([(claim, record(outcome, NOW, duration_s=d), False)])
    row = await backend.task_row("a")
    assert (row["run_count"], row["min_duration_s"], row["max_duration_s"]) == (3, 1.0, 4.0)
    assert row["avg_duration_s"] == pytest.approx(7 / 3, rel=1e-5)
    assert (row["consecutive_failures"], row["consecutive_timeouts"]) == (2, 1)
    [claim] = await store.claim_due(NOW + timedelta(days=1), 1)
    await store.complete_many([(claim, record(Outcome.INTERRUPTED, NOW, duration_s=9), False)])
    row = await backend.task_row("a")
    assert row["run_count"] == 3 and row["max_duration_s"] == 4.0  # a shutdown's cut is not a run


async def test_a_lost_lease_in_a_batch_fails_only_that_run(store: Store, backend: Backend) -> None:
    await store.sync_tasks([decl(f"t{i}") for i in range(4)])
    claims = sorted(await store.claim_due(NOW, 4), key=lambda c: c.name)
    await backend.set_task("t1", lease_token="theirs")  # another worker took t1 over
    results = await store.complete_many(
        [(c, record(Outcome.SUCCESS, NOW + timedelta(hours=1)), False) for c in claims]
    )
    assert results == [True, False, True, True]
    t1, t2 = await backend.task_row("t1"), await backend.task_row("t2")
    assert t1["lease_token"] == "theirs" and t1["run_count"] == 0
    assert t2["run_count"] == 1
    assert (await backend.run_rows())[claims[1].run_id]["outcome"] == "running"


async def test_interrupted_and_finished_runs_recorded_together(
    store: Store, backend: Backend
) -> None:
    """A shutdown ends runs of both kinds at once; an interrupted run sets no statistics,
    so the two kinds cannot share one statement."""
    await store.sync_tasks([decl(f"t{i}") for i in range(4)])
    claims = sorted(await store.claim_due(NOW, 4), key=lambda c: c.name)
    outcomes = [Outcome.SUCCESS, Outcome.INTERRUPTED, Outcome.FAILED, Outcome.INTERRUPTED]
    later = NOW + timedelta(hours=1)
    ended = [(c, record(o, later), False) for c, o in zip(claims, outcomes, strict=True)]
    assert await store.complete_many(ended) == [True] * 4
    rows = [await backend.task_row(f"t{i}") for i in range(4)]
    assert [r["run_count"] for r in rows] == [1, 0, 1, 0]
    assert all(r["lease_token"] is None for r in rows)


async def test_a_batch_mixing_kept_leases_and_quarantine(backend: Backend) -> None:
    store = backend.store("w1", quarantine_timeouts=1)
    await store.sync_tasks([decl(f"t{i}") for i in range(3)])
    a, b, c = sorted(await store.claim_due(NOW, 3), key=lambda c: c.name)
    later = NOW + timedelta(hours=1)
    results = await store.complete_many(
        [
            (a, record(Outcome.SUCCESS, later), False),
            (b, record(Outcome.TIMED_OUT, later), True),  # a thread that would not stop
            (c, record(Outcome.TIMED_OUT, later), False),
        ]
    )
    assert results == [True, True, True]
    states = {s.name: s for s in await store.status()}
    assert states["t0"].status == "active" and not states["t0"].running
    assert states["t1"].status == "quarantined" and states["t1"].running  # lease kept
    assert states["t2"].status == "quarantined" and not states["t2"].running
    assert await store.free_lease(b)
