"""Next-run planning after a run: no drift, triggers and retries off the plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cronloop.domain.outcome import Outcome
from cronloop.domain.planning import RetryPolicy, plan_next
from cronloop.domain.schedule import Every
from cronloop.store.sql.claims import Claim

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
HOUR = Every(timedelta(hours=1))


def claim(scheduled: datetime, planned: datetime | None = None, failures: int = 0) -> Claim:
    planned = planned or scheduled
    return Claim(
        task_id=1,
        name="t",
        token="x",
        run_id="r",
        scheduled_for=scheduled,
        planned_run=planned,
        triggered=scheduled < planned,
        took_over=None,
        consecutive_failures=failures,
    )


def test_no_drift_and_missed_slots_are_skipped_and_counted() -> None:
    late_finish = T0 + timedelta(minutes=59, seconds=59)
    assert plan_next(HOUR, claim(T0), Outcome.SUCCESS, late_finish).next_run == T0 + timedelta(
        hours=1
    )
    plan = plan_next(HOUR, claim(T0), Outcome.SUCCESS, T0 + timedelta(hours=3, minutes=30))
    assert (plan.next_run, plan.missed) == (T0 + timedelta(hours=4), 3)


def test_a_triggered_run_keeps_the_regular_slot() -> None:
    planned = T0 + timedelta(hours=1)
    plan = plan_next(HOUR, claim(T0, planned), Outcome.SUCCESS, T0 + timedelta(seconds=5))
    assert plan.next_run == planned and plan.planned_run == planned


def test_an_interrupted_run_is_due_again_at_once() -> None:
    plan = plan_next(HOUR, claim(T0), Outcome.INTERRUPTED, T0 + timedelta(minutes=5))
    assert plan.next_run == T0


def test_failures_retry_with_doubling_capped_by_the_period_then_fall_back() -> None:
    retry = RetryPolicy(retry_max=3, retry_delay_s=600)
    now = T0 + timedelta(seconds=1)
    delays = [
        plan_next(HOUR, claim(T0, failures=n), Outcome.FAILED, now, retry).next_run - now
        for n in range(4)
    ]
    assert delays[:3] == [timedelta(seconds=600), timedelta(seconds=1200), timedelta(seconds=2400)]
    assert plan_next(
        HOUR, claim(T0, failures=3), Outcome.FAILED, now, retry
    ).next_run == T0 + timedelta(hours=1)
    assert RetryPolicy(retry_max=5, retry_delay_s=3000).delay_s(3, 3600) == 3600
