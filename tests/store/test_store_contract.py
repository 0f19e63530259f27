"""The store's contract (`cronloop.store.interface.Store`), one suite over every
implementation: memory, SQLite and real MariaDB (the `backend` fixture).

Nothing here knows SQL: what a test must do behind the store's back (expire a lease, let
another worker take one, read a column no verb returns) goes through `store_backends`.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from store_backends import NOW, Backend, decl, record

from cronloop.domain.outcome import Outcome, TaskStatus
from cronloop.store import Store, TriggerResult, UnknownTask


def test_every_backend_is_a_store(store: Store) -> None:
    assert isinstance(store, Store) and store.worker_id == "w1"


async def test_sync_adds_removes_and_reactivates(store: Store) -> None:
    report = await store.sync_tasks([decl("a"), decl("b")])
    assert sorted(report.added) == ["a", "b"]
    report = await store.sync_tasks([decl("a")])
    assert report.removed == ["b"]
    assert {s.name: s.status for s in await store.status()} == {"a": "active", "b": "removed"}
    report = await store.sync_tasks([decl("a"), decl("b")])
    assert report.reactivated == ["b"]
    assert {s.name: s.status for s in await store.status()} == {"a": "active", "b": "active"}
    assert await store.task_names() == ["a", "b"]


async def test_sync_keeps_operator_pause_and_replans_changed_schedule(store: Store) -> None:
    await store.sync_tasks([decl("a")])
    await store.pause("a")
    later = NOW + timedelta(hours=1)
    report = await store.sync_tasks([decl("a", first_run=later, schedule="every 3600s")])
    assert report.replanned == ["a"]
    [state] = await store.status()
    assert state.status == "paused" and state.next_run == later and state.schedule == "every 3600s"


async def test_sync_disables_a_task_with_a_bad_setting_and_says_why(store: Store) -> None:
    await store.sync_tasks(
        [decl("a"), decl("b", first_run=None, error="params:3: at='9:30' is not HH:MM")]
    )
    states = {s.name: s for s in await store.status()}
    assert states["b"].status == TaskStatus.DISABLED
    assert "9:30" in (states["b"].status_reason or "")
    assert await store.claim_due(NOW, 10) != []  # a is still claimable
    await store.sync_tasks([decl("a"), decl("b")])
    assert {s.name: s.status for s in await store.status()}["b"] == "active"


async def test_sync_disables_by_configuration_and_follows_the_timeout(
    store: Store, backend: Backend
) -> None:
    report = await store.sync_tasks([decl("a", enabled=False)])
    [state] = await store.status()
    assert state.status == "disabled" and "enabled = 0" in (state.status_reason or "")
    report = await store.sync_tasks([decl("a")])
    assert report.reactivated == ["a"]
    await store.sync_tasks([decl("a", enabled=False)])
    assert report.disabled == [] and (await store.status())[0].status == "disabled"
    assert (await backend.task_row("a"))["timeout_s"] == 10.0


async def test_claim_takes_only_due_active_unleased_rows(store: Store, backend: Backend) -> None:
    await store.sync_tasks(
        [decl("due"), decl("later", first_run=NOW + timedelta(minutes=5)), decl("paused")]
    )
    await store.pause("paused")
    claims = await store.claim_due(NOW, 10)
    assert [c.name for c in claims] == ["due"]
    assert claims[0].run_id.endswith(f"-{claims[0].task_id}") and not claims[0].took_over
    assert await store.claim_due(NOW, 10) == []  # leased now: nobody else gets it
    other = backend.store("w2")
    assert [c.name for c in await other.claim_due(NOW + timedelta(minutes=10), 10)] == ["later"]
    [state] = await store.status(["later"])
    assert state.running and state.owner == "w2"


async def test_claim_respects_limit_order_and_names(store: Store) -> None:
    await store.sync_tasks([decl(f"t{i}", first_run=NOW - timedelta(seconds=i)) for i in range(5)])
    assert await store.claim_due(NOW, 0) == []
    claims = await store.claim_due(NOW, 2)
    assert [c.name for c in claims] == ["t4", "t3"]
    assert [c.name for c in await store.claim_due(NOW, 10, names=["t0", "nope"])] == ["t0"]


async def test_an_active_task_without_a_next_run_is_never_claimed(store: Store) -> None:
    """A row may be active with no next run (a schedule with no further slot): it must
    neither be claimed nor break the claim of the others, nor wake the loop."""
    await store.sync_tasks([decl("never", first_run=None), decl("a")])
    batch = await store.claim_next(NOW, 10)
    assert [c.name for c in batch.claims] == ["a"] and batch.next_due is None
    assert await store.next_due() is None


async def test_claim_next_says_when_the_next_run_is_due(store: Store) -> None:
    later = NOW + timedelta(seconds=7)
    await store.sync_tasks([decl("a"), decl("b"), decl("c", first_run=later)])
    batch = await store.claim_next(NOW, 10)
    assert sorted(c.name for c in batch.claims) == ["a", "b"]
    assert batch.next_due == later  # the first row not taken
    batch = await store.claim_next(NOW, 10)
    assert batch.claims == [] and batch.next_due == later
    assert (await store.claim_next(later, 10)).next_due is None  # nothing else is free


async def test_a_full_batch_says_more_is_due(store: Store) -> None:
    await store.sync_tasks([decl(f"t{i}") for i in range(5)])
    batch = await store.claim_next(NOW, 2)
    assert len(batch.claims) == 2 and batch.next_due == NOW  # more due right now


async def test_complete_writes_stats_and_frees_the_lease(store: Store) -> None:
    await store.sync_tasks([decl("a")])
    for duration in (1.0, 3.0, 2.0):
        [claim] = await store.claim_due(NOW, 1)
        assert await store.complete(claim, record(Outcome.SUCCESS, NOW, duration, message="ok"))
    [s] = await store.status()
    assert (s.runs, s.min_duration_s, s.max_duration_s) == (3, 1.0, 3.0)
    assert s.avg_duration_s == pytest.approx(2.0)
    assert s.latest_duration_s == 2.0 and s.last_message == "ok" and not s.running
    assert s.last_outcome == "success" and s.last_user and s.last_host


async def test_failures_count_in_a_row_and_reset_on_success(store: Store) -> None:
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


async def test_fencing_a_lost_lease_writes_nothing(store: Store, backend: Backend) -> None:
    await store.sync_tasks([decl("a")])
    [stale] = await store.claim_due(NOW, 1)
    await backend.expire_leases()  # e.g. the worker was stopped
    other = backend.store("w2")
    [fresh] = await other.claim_due(NOW, 1)
    assert fresh.took_over == stale.run_id and fresh.token != stale.token
    assert await store.renew([stale]) == {stale.run_id}
    assert not await store.complete(stale, record(Outcome.SUCCESS, NOW + timedelta(days=9)))
    assert not await store.release(stale) and not await store.free_lease(stale)
    [s] = await store.status()
    assert s.running and s.owner == "w2" and s.next_run == NOW
    history = {e.run_id: e for e in await store.history("a")}
    assert {k: e.outcome for k, e in history.items()} == {
        stale.run_id: "abandoned",
        fresh.run_id: "running",
    }
    assert history[stale.run_id].ended and "lost" in (history[stale.run_id].error or "")
    assert await other.complete(fresh, record(Outcome.SUCCESS, NOW + timedelta(minutes=1)))


async def test_renew_extends_by_the_database_clock(store: Store, backend: Backend) -> None:
    await store.sync_tasks([decl("a")])
    [claim] = await store.claim_due(NOW, 1)
    first = (await backend.task_row("a"))["lease_until"]
    db_now = await store.database_now()
    assert db_now.tzinfo is not None and db_now.utcoffset() == timedelta(0)
    assert timedelta(seconds=25) < first - db_now <= timedelta(seconds=30)
    await asyncio.sleep(0.05)
    assert await store.renew([claim]) == set()
    assert await store.renew([]) == set()
    assert (await backend.task_row("a"))["lease_until"] > first


async def test_release_gives_a_claim_back_unrun(store: Store) -> None:
    await store.sync_tasks([decl("a")])
    [claim] = await store.claim_due(NOW, 1)
    assert await store.release(claim)
    [entry] = await store.history("a")
    assert entry.outcome == "skipped" and entry.ended is not None
    assert not (await store.status())[0].running
    [again] = await store.claim_due(NOW, 1)  # still due: nothing was recorded
    assert again.took_over is None and again.scheduled_for == NOW


async def test_a_kept_lease_blocks_the_task_until_freed(store: Store) -> None:
    """A thread that cannot be stopped: its run is recorded, its lease kept."""
    await store.sync_tasks([decl("a")])
    [claim] = await store.claim_due(NOW, 1)
    done = record(Outcome.TIMED_OUT, NOW)
    assert await store.complete(claim, done, keep_lease=True)
    [state] = await store.status()
    assert state.running and state.last_outcome == "timed_out"
    assert await store.claim_due(NOW, 1) == [] and await store.next_due() is None
    assert await store.free_lease(claim)
    assert not await store.free_lease(claim)  # once
    assert [c.name for c in await store.claim_due(NOW, 1)] == ["a"]


async def test_reap_closes_history_of_vanished_workers(store: Store, backend: Backend) -> None:
    await store.sync_tasks([decl("a")])
    [claim] = await store.claim_due(NOW, 1)
    await store.pause("a")  # nobody will claim it again
    assert await store.reap_abandoned() == 0
    await backend.expire_leases()
    assert await store.reap_abandoned() == 1
    assert await store.reap_abandoned() == 0
    [entry] = await store.history()
    assert entry.run_id == claim.run_id and entry.outcome == "abandoned" and entry.ended


async def test_trigger_brings_a_run_forward_without_moving_the_plan(store: Store) -> None:
    later = NOW + timedelta(hours=1)
    await store.sync_tasks([decl("a", first_run=later)])
    assert await store.trigger("a", NOW) == TriggerResult.QUEUED
    [claim] = await store.claim_due(NOW, 1)
    assert claim.triggered and claim.scheduled_for == NOW and claim.planned_run == later
    [entry] = await store.history("a")
    assert entry.triggered
    with pytest.raises(UnknownTask):
        await store.trigger("nope", NOW)
    await store.pause("a")
    assert await store.trigger("a", NOW) == TriggerResult.NOT_ACTIVE


async def test_trigger_never_delays_a_run_already_due(store: Store) -> None:
    await store.sync_tasks([decl("a")])
    assert await store.trigger("a", NOW + timedelta(minutes=5)) == TriggerResult.QUEUED
    assert (await store.status())[0].next_run == NOW


async def test_pause_resume_unknown_and_removed(store: Store) -> None:
    await store.sync_tasks([decl("a"), decl("gone")])
    await store.sync_tasks([decl("a")])
    assert await store.pause("a") == "active"
    assert (await store.status(["a"]))[0].status_reason == "paused by an operator"
    assert await store.resume("a") == "paused"
    assert await store.resume("gone") == "removed"
    assert {s.name: s.status for s in await store.status()}["gone"] == "removed"
    with pytest.raises(UnknownTask):
        await store.pause("nope")
    with pytest.raises(UnknownTask):
        await store.resume("nope")


async def test_history(store: Store) -> None:
    await store.sync_tasks([decl("a"), decl("b")])
    [claim] = await store.claim_due(NOW, 1, names=["a"])
    await store.complete(claim, record(Outcome.SUCCESS, NOW, message="done", missed=2))
    [entry] = await store.history("a")
    assert (entry.outcome, entry.message, entry.missed, entry.worker) == (
        "success",
        "done",
        2,
        "w1",
    )
    assert (entry.started, entry.duration_s, entry.triggered) == (NOW, 1.0, False)
    await store.claim_due(NOW, 1, names=["b"])
    assert [e.task_name for e in await store.history()] == ["b", "a"]  # newest first
    assert len(await store.history(limit=1)) == 1 and await store.history("nope") == []


async def test_timestamps_keep_microseconds_and_utc(store: Store) -> None:
    precise = datetime(2026, 3, 2, 9, 0, 0, 123456, tzinfo=UTC)
    await store.sync_tasks([decl("a", first_run=precise)])
    [s] = await store.status()
    assert s.next_run == precise and s.next_run.tzinfo is UTC
    with pytest.raises(Exception, match="naive"):
        await store.sync_tasks([decl("b", first_run=datetime(2026, 3, 2, 9, 0))])


async def test_concurrent_claims_never_share_a_run(store: Store, backend: Backend) -> None:
    await store.sync_tasks([decl(f"t{i}") for i in range(40)])
    workers = [backend.store(f"w{i}") for i in range(4)]
    batches = await asyncio.gather(*(w.claim_due(NOW, 15) for w in workers))
    # a claim also locks the row after its batch (to tell when it is due), so a worker
    # racing it may skip that row for a moment; the next round takes it
    batches += await asyncio.gather(*(w.claim_due(NOW, 15) for w in workers))
    names = [c.name for batch in batches for c in batch]
    assert len(names) == len(set(names)) == 40
    started = [r["task_name"] for r in (await backend.run_rows()).values()]
    assert sorted(started) == sorted(names)


async def test_repeated_timeouts_quarantine_until_resumed(backend: Backend) -> None:
    store = backend.store("w1", quarantine_timeouts=3)
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


async def test_a_timeout_never_overrides_an_operators_pause(backend: Backend) -> None:
    store = backend.store("w1", quarantine_timeouts=1)
    await store.sync_tasks([decl("a")])
    [claim] = await store.claim_due(NOW, 1)
    await store.pause("a")  # while it runs
    assert await store.complete(claim, record(Outcome.TIMED_OUT, NOW))
    assert (await store.status())[0].status == "paused"


async def test_strikes_then_quarantine(store: Store, backend: Backend) -> None:
    """The watchdog's road to quarantine: a strike per blocked loop."""
    await store.sync_tasks([decl(n, first_run=None) for n in ("hog", "ok", "held")])
    await store.pause("held")
    reason = "blocked the event loop for 31 s"
    assert await store.strike(["hog", "held", "nope"], reason, 2) == []
    assert (await store.status(["hog"]))[0].status == TaskStatus.ACTIVE
    assert await store.strike(["hog", "held"], reason, 2) == ["hog"]
    hog, ok, held = [await backend.task_row(n) for n in ("hog", "ok", "held")]
    assert (hog["status"], hog["strikes"]) == (TaskStatus.QUARANTINED, 2)
    assert hog["status_reason"].startswith("blocked the event loop for 31 s, 2 strikes")
    assert "cronloop resume hog" in hog["status_reason"]
    assert (ok["strikes"], ok["status"]) == (0, TaskStatus.ACTIVE)
    assert (held["strikes"], held["status"]) == (2, TaskStatus.PAUSED)  # the pause stays
    assert (await store.status(["hog"]))[0].status_reason == hog["status_reason"]
    assert await store.strike([], reason, 2) == []
    await store.resume("hog")
    hog = await backend.task_row("hog")
    assert (hog["status"], hog["strikes"]) == (TaskStatus.ACTIVE, 0)


async def test_next_due_ignores_runs_in_progress(store: Store, backend: Backend) -> None:
    """A running task's next_run is its past slot; counting it would make the loop spin."""
    await store.sync_tasks([decl("busy"), decl("later", first_run=NOW + timedelta(minutes=5))])
    assert await store.next_due() == NOW
    assert await store.next_due(["later"]) == NOW + timedelta(minutes=5)
    [claim] = await store.claim_due(NOW, 1, names=["busy"])
    assert await store.next_due() == NOW + timedelta(minutes=5)
    await backend.expire_leases("busy")
    assert await store.next_due() == NOW  # an expired lease can be taken over
    await store.renew([claim])
    await store.complete(claim, record(Outcome.SUCCESS, NOW + timedelta(minutes=1)))
    assert await store.next_due() == NOW + timedelta(minutes=1)
    await store.pause("busy")
    assert await store.next_due() == NOW + timedelta(minutes=5)


async def test_claim_without_takeover_leaves_expired_leases_alone(
    store: Store, backend: Backend
) -> None:
    """Just after an outage the supervisor claims with takeover=False: an expired lease's
    owner may be recording that run right now."""
    await store.sync_tasks([decl("a"), decl("b")])
    await store.claim_due(NOW, 1, names=["a"])
    await backend.expire_leases("a")
    assert [c.name for c in await store.claim_due(NOW, 10, takeover=False)] == ["b"]
    [taken] = await store.claim_due(NOW, 10)
    assert taken.name == "a" and taken.took_over is not None
