"""When a task runs next, once a run has ended. Pure: the clock is passed in.

Two times are kept per task: `planned_run`, the schedule's own slot, and `next_run`, when
to run next. A trigger or a failure retry brings `next_run` forward without touching
`planned_run`, so periodic tasks never drift and missed slots are skipped, not replayed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cronloop.domain.outcome import Outcome
from cronloop.domain.records import Claim
from cronloop.domain.schedule import Schedule


@dataclass(frozen=True)
class RetryPolicy:
    """Failed runs retry after `retry_delay_s`, doubling, capped at the task's period."""

    retry_max: int = 3
    retry_delay_s: float = 30.0

    def delay_s(self, failures: int, period_s: float) -> float | None:
        """Seconds until the retry after the `failures`-th consecutive failure, or None
        once retries are exhausted (the task falls back to its schedule)."""
        if failures < 1 or failures > self.retry_max:
            return None
        return min(self.retry_delay_s * 2.0 ** (failures - 1), period_s)


@dataclass(frozen=True)
class Plan:
    next_run: datetime
    planned_run: datetime
    missed: int


def plan_next(
    schedule: Schedule,
    claim: Claim,
    outcome: Outcome,
    now: datetime,
    retry: RetryPolicy | None = None,
) -> Plan:
    """The next run after `claim` ended with `outcome` at `now`."""
    planned = claim.planned_run or claim.scheduled_for
    if outcome == Outcome.INTERRUPTED:
        # cut off by a shutdown: run again as soon as a worker is up, same slot
        return Plan(next_run=claim.scheduled_for, planned_run=planned, missed=0)
    missed = 0
    if not claim.triggered:
        upcoming = schedule.next_after(planned, now)
        planned, missed = upcoming.at, upcoming.missed
    next_run = planned
    if outcome.is_failure and retry is not None:
        delay = retry.delay_s(claim.consecutive_failures + 1, schedule.period_s())
        if delay is not None:
            next_run = min(planned, now + timedelta(seconds=delay))
    return Plan(next_run=next_run, planned_run=planned, missed=missed)
