"""A task row and a history row after a run ended, as plain column values, and the
records (Claim, TaskState, RunEntry, JobInfo) every store builds from a row it read.

Both stores write exactly these values (the SQL store through its batch statements, the
in-memory store into its rows), so the statistics cannot differ between them. Computed
from what the claim read: the lease makes the row this worker's until the run is recorded.
Knows no SQL and no storage.
"""

from __future__ import annotations

from typing import Any

from cronloop.domain.jobs import JobInfo, JobState
from cronloop.domain.outcome import Outcome
from cronloop.domain.records import Claim, RunEntry, RunRecord, TaskState


def task_values(claim: Claim, record: RunRecord, *, keep_lease: bool) -> dict[str, Any]:
    """The task row after `record`, as plain values (statistics from the claim's)."""
    values: dict[str, Any] = {
        "latest_run_start": record.started,
        "latest_run_end": record.ended,
        "last_outcome": record.outcome.value,
        "last_message": record.message,
        "last_error": record.error,
        "next_run": record.next_run,
        "planned_run": record.planned_run,
        "first_run": claim.first_run or record.started,
    }
    if not keep_lease:
        values.update(owner=None, lease_token=None, lease_until=None)
    if record.outcome != Outcome.INTERRUPTED:  # a shutdown's cut is not a run
        d = record.duration_s
        n = claim.run_count
        timed_out = record.outcome == Outcome.TIMED_OUT
        values.update(
            latest_duration_s=d,
            min_duration_s=d if claim.min_duration_s is None else min(claim.min_duration_s, d),
            max_duration_s=d if claim.max_duration_s is None else max(claim.max_duration_s, d),
            avg_duration_s=((claim.avg_duration_s or 0.0) * n + d) / (n + 1),
            consecutive_failures=claim.consecutive_failures + 1 if record.outcome.is_failure else 0,
            consecutive_timeouts=claim.consecutive_timeouts + 1 if timed_out else 0,
            run_count=n + 1,
        )
    return values


def history_values(record: RunRecord) -> dict[str, Any]:
    """The history row's end."""
    return {
        "started": record.started,
        "ended": record.ended,
        "duration_s": record.duration_s,
        "outcome": record.outcome.value,
        "message": record.message,
        "error": record.error,
        "missed": record.missed,
    }


def quarantines(claim: Claim, record: RunRecord, quarantine_timeouts: int) -> bool:
    """This timeout is the task's `quarantine_timeouts`-th in a row (0: never)."""
    return bool(
        quarantine_timeouts
        and record.outcome == Outcome.TIMED_OUT
        and claim.consecutive_timeouts + 1 >= quarantine_timeouts
    )


def claim_of(row: Any, token: str) -> Claim:
    """The Claim a store hands out for a task row it just leased (SQL row or memory row)."""
    planned = row.planned_run
    return Claim(
        task_id=row.id,
        name=row.name,
        token=token,
        run_id=f"{token}-{row.id}",
        scheduled_for=row.next_run,
        planned_run=planned,
        triggered=planned is not None and row.next_run < planned,
        took_over=row.run_id if row.lease_token else None,
        consecutive_failures=row.consecutive_failures,
        consecutive_timeouts=row.consecutive_timeouts,
        run_count=row.run_count,
        min_duration_s=row.min_duration_s,
        max_duration_s=row.max_duration_s,
        avg_duration_s=row.avg_duration_s,
        first_run=row.first_run,
    )


def task_state_of(row: Any, running: bool) -> TaskState:
    """What `status` shows of a task row (SQL row or memory row); `running`: its lease is
    held and not expired on the database clock, which each store computes its own way."""
    return TaskState(
        name=row.name,
        status=row.status,
        status_reason=row.status_reason,
        schedule=row.schedule,
        next_run=row.next_run,
        latest_run_start=row.latest_run_start,
        latest_run_end=row.latest_run_end,
        runs=row.run_count,
        avg_duration_s=row.avg_duration_s,
        min_duration_s=row.min_duration_s,
        max_duration_s=row.max_duration_s,
        latest_duration_s=row.latest_duration_s,
        last_outcome=row.last_outcome,
        last_message=row.last_message,
        last_error=row.last_error,
        running=running,
        owner=row.owner if running else None,
        consecutive_failures=row.consecutive_failures,
        last_user=row.last_user,
        last_host=row.last_host,
    )


def run_entry_of(row: Any) -> RunEntry:
    """A history row as `history` shows it (SQL row or memory row)."""
    return RunEntry(
        run_id=row.run_id,
        task_name=row.task_name,
        scheduled_for=row.scheduled_for,
        started=row.started,
        ended=row.ended,
        duration_s=row.duration_s,
        outcome=row.outcome,
        message=row.message,
        error=row.error,
        worker=row.worker,
        missed=row.missed,
        triggered=bool(row.triggered),
    )


def job_info_of(row: Any) -> JobInfo:
    """A job row (a SQL row or the in-memory one: the same attribute names) as the
    operator sees it."""
    return JobInfo(
        id=row.id,
        kind=row.kind,
        state=JobState(row.state),
        priority=row.priority,
        run_at=row.run_at,
        attempts=row.attempts,
        max_retries=row.max_retries,
        unique_key=row.unique_key,
        last_error=row.last_error,
        created=row.created,
        finished=row.finished,
        strikes=row.strikes,
    )
