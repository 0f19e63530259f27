"""The records the store exchanges with its callers: plain, frozen data.

Kept apart from `worker/store.py` so that the SQL stays in one place and these shapes
can be read (and imported by the planner, the display and tests) on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cronloop.domain.outcome import Outcome


class UnknownTask(LookupError):
    """No task of that name in the table."""


@dataclass(frozen=True)
class TaskDeclaration:
    """What `sync_tasks` needs to know of a task this worker can run."""

    name: str
    schedule: str  # human description; a change means "recompute the next run"
    timeout_s: float
    first_run: datetime | None  # next slot if (re)planned now; None if not runnable
    error: str | None = None  # why it is disabled by configuration
    enabled: bool = True


@dataclass(frozen=True)
class SyncReport:
    added: list[str]
    removed: list[str]
    reactivated: list[str]
    disabled: list[str]
    replanned: list[str]


@dataclass(frozen=True)
class Claim:
    """One run this worker now owns, until its lease runs out."""

    task_id: int
    name: str
    token: str
    run_id: str
    scheduled_for: datetime
    planned_run: datetime | None
    triggered: bool  # brought forward by `trigger` or a retry, off the schedule's slot
    took_over: str | None  # run id of an abandoned run this claim replaces
    consecutive_failures: int
    # the row's statistics when claimed: the lease makes the row ours until the run is
    # recorded, so the new values are computed here and written as plain values (one
    # statement can then record many runs, and a retried write is idempotent)
    consecutive_timeouts: int = 0
    run_count: int = 0
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    avg_duration_s: float | None = None
    first_run: datetime | None = None


@dataclass(frozen=True)
class ClaimBatch:
    """What one claim took, and when the next available run is due (None: no other
    active task is free to run)."""

    claims: list[Claim]
    next_due: datetime | None


@dataclass(frozen=True)
class RunRecord:
    """How a run ended and what comes next, written by `complete`."""

    outcome: Outcome
    started: datetime
    ended: datetime
    duration_s: float
    next_run: datetime | None
    planned_run: datetime | None
    message: str | None = None
    error: str | None = None
    missed: int = 0


@dataclass(frozen=True)
class TaskState:
    """A task row as `cronloop status` shows it."""

    name: str
    status: str
    status_reason: str | None
    schedule: str
    next_run: datetime | None
    latest_run_start: datetime | None
    latest_run_end: datetime | None
    runs: int
    avg_duration_s: float | None
    min_duration_s: float | None
    max_duration_s: float | None
    latest_duration_s: float | None
    last_outcome: str | None
    last_message: str | None
    last_error: str | None
    running: bool
    owner: str | None
    consecutive_failures: int
    last_user: str | None
    last_host: str | None


@dataclass(frozen=True)
class RunEntry:
    """One row of the run history."""

    run_id: str
    task_name: str
    scheduled_for: datetime
    started: datetime
    ended: datetime | None
    duration_s: float | None
    outcome: str
    message: str | None
    error: str | None
    worker: str
    missed: int
    triggered: bool


class TriggerResult(StrEnum):
    QUEUED = "queued"
    NOT_ACTIVE = "not_active"
