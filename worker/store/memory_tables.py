"""The in-memory store's "database": the rows of `cronloop_task` and `cronloop_run` (same
column names) and the clock leases are measured on.

Used by `cronloop.store.memory` only; holds the row-level moves several verbs share
(the fence, a lease's freedom, ending a history row, quarantining), never a verb.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cronloop.domain.outcome import Outcome, TaskStatus
from cronloop.domain.records import Claim, UnknownTask

if TYPE_CHECKING:
    from cronloop.store.memory_jobs import JobRow


def utc_only(value: Any) -> Any:
    """Refuse a naive datetime, as the SQL store's column type does."""
    if isinstance(value, datetime) and value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: cronloop stores UTC instants only")
    return value.astimezone(UTC) if isinstance(value, datetime) else value


@dataclass
class TaskRow:
    """One row of `cronloop_task`."""

    id: int
    name: str
    status: str
    schedule: str
    created: datetime
    updated: datetime
    status_reason: str | None = None
    timeout_s: float | None = None
    next_run: datetime | None = None
    planned_run: datetime | None = None
    first_run: datetime | None = None
    latest_run_start: datetime | None = None
    latest_run_end: datetime | None = None
    run_count: int = 0
    latest_duration_s: float | None = None
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    avg_duration_s: float | None = None
    consecutive_failures: int = 0
    consecutive_timeouts: int = 0
    strikes: int = 0
    last_outcome: str | None = None
    last_message: str | None = None
    last_error: str | None = None
    last_user: str | None = None
    last_host: str | None = None
    owner: str | None = None
    lease_token: str | None = None
    lease_until: datetime | None = None
    run_id: str | None = None
    run_scheduled_for: datetime | None = None

    def set(self, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            if name not in _TASK_COLUMNS:
                raise KeyError(f"cronloop_task has no column {name!r}")
            setattr(self, name, utc_only(value))


@dataclass
class RunRow:
    """One row of `cronloop_run`."""

    id: int
    run_id: str
    task_name: str
    scheduled_for: datetime
    started: datetime
    outcome: str
    worker: str
    triggered: bool = False
    ended: datetime | None = None
    duration_s: float | None = None
    message: str | None = None
    error: str | None = None
    missed: int = 0


_TASK_COLUMNS = frozenset(f.name for f in fields(TaskRow))


class MemoryDatabase:
    """The rows, and the clock leases are measured on (the database's, not a worker's)."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.clock = clock or (lambda: datetime.now(UTC))
        self.tasks: dict[int, TaskRow] = {}
        self.runs: dict[str, RunRow] = {}
        self.jobs: dict[int, JobRow] = {}  # cronloop_job (see memory_jobs)
        self._ids = 0

    def now(self, plus_s: float = 0.0) -> datetime:
        now: datetime = utc_only(self.clock())
        return now + timedelta(seconds=plus_s)

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def by_name(self, name: str) -> TaskRow:
        for row in self.tasks.values():
            if row.name == name:
                return row
        raise UnknownTask(name)

    def held(self, claim: Claim) -> TaskRow | None:
        """The claim's task row if the claim still holds its lease (the fence)."""
        row = self.tasks.get(claim.task_id)
        return row if row is not None and row.lease_token == claim.token else None

    def lease_free(self, row: TaskRow, *, takeover: bool = True, skew_s: float = 0.0) -> bool:
        """No lease, or (with `takeover`) one expired by more than `skew_s`."""
        if row.lease_until is None:
            return True
        return takeover and row.lease_until < self.now(-skew_s)

    def end_run(self, run_id: str | None, **values: Any) -> bool:
        """Set the end of a `running` history row (no row, or already ended: False)."""
        run = self.runs.get(run_id or "")
        if run is None or run.outcome != Outcome.RUNNING:
            return False
        for name, value in values.items():
            setattr(run, name, utc_only(value))
        return True

    def quarantine(self, row: TaskRow, reason: str) -> bool:
        """Quarantine the row if it is still active (an operator's pause stays)."""
        if row.status != TaskStatus.ACTIVE:
            return False
        row.set({"status": TaskStatus.QUARANTINED.value, "status_reason": reason})
        return True
