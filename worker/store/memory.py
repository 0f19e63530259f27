"""An in-memory store: the `Store` contract without a database, for fast unit tests.

`MemoryDatabase` plays the database: the task rows and history rows (the columns of
`cronloop_task` and `cronloop_run`, same names) and the clock leases are measured on,
injected like the worker's (`MemoryDatabase(clock=fake.now)`). Several `MemoryStore`s
over one `MemoryDatabase` are several workers sharing a table. Each verb runs without
awaiting between reading and writing, so it is as atomic as a transaction; it yields to
the loop once first, as a round trip would.

It passes the same contract suite as SQLite and MariaDB (`tests/store/`); the statistics
come from `cronloop.store.rows`, like the SQL store's. Knows no SQL and no runtime.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cronloop.domain.outcome import Outcome, TaskStatus
from cronloop.domain.records import (
    Claim,
    ClaimBatch,
    RunEntry,
    RunRecord,
    SyncReport,
    TaskDeclaration,
    TaskState,
    TriggerResult,
)
from cronloop.store.errors import ErrorKind
from cronloop.store.interface import (
    ABANDONED_ERROR,
    DISABLED_BY_CONFIG,
    Ended,
    strike_quarantine_reason,
    timeout_quarantine_reason,
)
from cronloop.store.memory_jobs import MemoryJobs
from cronloop.store.memory_tables import (
    MemoryDatabase,
    RunRow,
    TaskRow,
    utc_only,
)
from cronloop.store.rows import (
    claim_of,
    history_values,
    quarantines,
    run_entry_of,
    task_state_of,
    task_values,
)

__all__ = ["MemoryDatabase", "MemoryStore"]


def _running(row: TaskRow, db_now: datetime) -> bool:
    """The row's lease is held and not expired at `db_now`."""
    return row.lease_token is not None and row.lease_until is not None and row.lease_until >= db_now


class MemoryStore(MemoryJobs):
    """`Store` over a `MemoryDatabase` (a fresh one unless shared with other workers);
    the job queue's verbs (`JobStore`) are `MemoryJobs`', over the same attributes."""

    def __init__(
        self,
        db: MemoryDatabase | None = None,
        *,
        worker_id: str | None = None,
        lease_s: float = 30.0,
        quarantine_timeouts: int = 0,
        max_clock_skew_s: float = 0.0,
        quarantine_strikes: int = 0,
    ) -> None:
        self.db = db or MemoryDatabase()
        self.max_clock_skew_s = max_clock_skew_s  # see the SQL Connector.expired_before
        self.worker_id = worker_id or f"memory:{uuid.uuid4().hex[:6]}"
        self.lease_s = lease_s
        self.quarantine_timeouts = quarantine_timeouts
        self.quarantine_strikes = quarantine_strikes
        self._who = {"last_user": "memory", "last_host": "memory"}

    async def database_now(self) -> datetime:
        await asyncio.sleep(0)
        return self.db.now()

    async def close(self) -> None:
        pass

    def classify_error(self, exc: BaseException) -> ErrorKind:
        """Nothing here fails as a database does, but a test's injected connection
        error is an outage; anything else is a bug."""
        return (
            ErrorKind.OUTAGE if isinstance(exc, ConnectionError | TimeoutError) else ErrorKind.BUG
        )

    async def sync_tasks(self, declared: Iterable[TaskDeclaration]) -> SyncReport:
        await asyncio.sleep(0)
        decls = {d.name: d for d in declared}
        for d in decls.values():
            utc_only(d.first_run)  # refuse before writing anything
        return _sync(self.db, decls)

    # -- claims and leases --------------------------------------------------------------

    async def claim_next(
        self,
        now: datetime,
        limit: int,
        names: Sequence[str] | None = None,
        *,
        takeover: bool = True,
    ) -> ClaimBatch:
        await asyncio.sleep(0)
        utc_only(now)
        if limit <= 0:
            return ClaimBatch([], None)
        db = self.db
        free = sorted(
            (
                row
                for row in db.tasks.values()
                if row.status == TaskStatus.ACTIVE
                and row.next_run is not None
                and db.lease_free(row, takeover=takeover, skew_s=self.max_clock_skew_s)
                and (names is None or row.name in names)
            ),
            key=lambda row: (row.next_run, row.id),
        )
        due = [row for row in free[:limit] if row.next_run is not None and row.next_run <= now]
        rest = free[len(due) :]
        next_due = rest[0].next_run if rest else None
        token = uuid.uuid4().hex[:24]
        claims = [claim_of(row, token) for row in due]
        for row, claim in zip(due, claims, strict=True):
            if claim.took_over:
                db.end_run(claim.took_over, **self._abandoned())
            row.set(
                dict(
                    owner=self.worker_id,
                    lease_token=token,
                    lease_until=db.now(self.lease_s),
                    run_id=claim.run_id,
                    run_scheduled_for=row.next_run,
                )
            )
            db.runs[claim.run_id] = RunRow(
                db.next_id(),
                claim.run_id,
                claim.name,
                claim.scheduled_for,
                now,
                Outcome.RUNNING.value,
                self.worker_id,
                triggered=claim.triggered,
            )
        return ClaimBatch(claims, next_due)

    async def claim_due(
        self,
        now: datetime,
        limit: int,
        names: Sequence[str] | None = None,
        *,
        takeover: bool = True,
    ) -> list[Claim]:
        return (await self.claim_next(now, limit, names, takeover=takeover)).claims

    async def renew(self, claims: Iterable[Claim]) -> set[str]:
        await asyncio.sleep(0)
        lost: set[str] = set()
        for claim in claims:
            row = self.db.held(claim)
            if row is None:
                lost.add(claim.run_id)
            else:
                row.lease_until = self.db.now(self.lease_s)
        return lost

    async def release(self, claim: Claim) -> bool:
        await asyncio.sleep(0)
        if not self._free(claim):
            return False
        self.db.end_run(
            claim.run_id, outcome=Outcome.SKIPPED.value, ended=self.db.now(), error="released unrun"
        )
        return True

    async def free_lease(self, claim: Claim) -> bool:
        await asyncio.sleep(0)
        return self._free(claim)

    def _free(self, claim: Claim) -> bool:
        row = self.db.held(claim)
        if row is not None:
            row.set(dict(owner=None, lease_token=None, lease_until=None))
        return row is not None

    async def reap_abandoned(self) -> int:
        await asyncio.sleep(0)
        db = self.db
        stale = [
            r.run_id
            for r in db.tasks.values()
            if r.lease_token and db.lease_free(r, skew_s=self.max_clock_skew_s)
        ]
        return sum(db.end_run(run_id, **self._abandoned()) for run_id in stale)

    def _abandoned(self) -> dict[str, Any]:
        return {
            "outcome": Outcome.ABANDONED.value,
            "ended": self.db.now(),
            "error": ABANDONED_ERROR,
        }

    async def next_due(self, names: Sequence[str] | None = None) -> datetime | None:
        await asyncio.sleep(0)
        due = [
            row.next_run
            for row in self.db.tasks.values()
            if row.status == TaskStatus.ACTIVE
            and row.next_run is not None
            and (row.lease_token is None or self.db.lease_free(row, skew_s=self.max_clock_skew_s))
            and (names is None or row.name in names)
        ]
        return min(due, default=None)

    # -- recording ------------------------------------------------------------------

    async def complete(self, claim: Claim, record: RunRecord, *, keep_lease: bool = False) -> bool:
        return (await self.complete_many([(claim, record, keep_lease)]))[0]

    async def complete_many(self, ended: Sequence[Ended]) -> list[bool]:
        await asyncio.sleep(0)
        return [self._record(claim, record, keep) for claim, record, keep in ended]

    def _record(self, claim: Claim, record: RunRecord, keep_lease: bool) -> bool:
        row = self.db.held(claim)
        if row is None:
            return False
        values = task_values(claim, record, keep_lease=keep_lease)
        for value in (*values.values(), *history_values(record).values()):
            utc_only(value)  # all of it or nothing
        if quarantines(claim, record, self.quarantine_timeouts):
            self.db.quarantine(row, timeout_quarantine_reason(self.quarantine_timeouts))
        row.set({**values, **self._who, "updated": self.db.now()})
        run = self.db.runs.get(claim.run_id)
        if run is not None:
            for name, value in history_values(record).items():
                setattr(run, name, utc_only(value))
        return True

    async def strike(self, names: Sequence[str], reason: str, quarantine_strikes: int) -> list[str]:
        await asyncio.sleep(0)
        quarantined = []
        for row in self.db.tasks.values():
            if row.name not in names:
                continue
            row.set(dict(strikes=row.strikes + 1, updated=self.db.now()))
            if row.strikes >= quarantine_strikes and self.db.quarantine(
                row, strike_quarantine_reason(reason, row.strikes, row.name)
            ):
                quarantined.append(row.name)
        return quarantined

    # -- operator verbs and reading -------------------------------------------------

    async def pause(self, name: str) -> str:
        return await self._set_status(name, TaskStatus.PAUSED, "paused by an operator")

    async def resume(self, name: str) -> str:
        return await self._set_status(name, TaskStatus.ACTIVE, None)

    async def _set_status(self, name: str, status: TaskStatus, reason: str | None) -> str:
        await asyncio.sleep(0)
        row = self.db.by_name(name)
        old = row.status
        if old in (TaskStatus.REMOVED, TaskStatus.DISABLED) and status == TaskStatus.ACTIVE:
            return old  # configuration, not the operator, decides those
        row.set(dict(status=status.value, status_reason=reason, updated=self.db.now()))
        if status == TaskStatus.ACTIVE:
            row.set(dict(strikes=0, consecutive_timeouts=0))
        return old

    async def trigger(self, name: str, now: datetime) -> TriggerResult:
        await asyncio.sleep(0)
        utc_only(now)
        row = self.db.by_name(name)
        if row.status != TaskStatus.ACTIVE:
            return TriggerResult.NOT_ACTIVE
        if row.next_run is None or row.next_run > now:
            row.set(dict(next_run=now))
        row.set(dict(updated=self.db.now()))
        return TriggerResult.QUEUED

    async def status(self, names: Sequence[str] | None = None) -> list[TaskState]:
        await asyncio.sleep(0)
        rows = sorted(self.db.tasks.values(), key=lambda row: row.name)
        now = self.db.now(-self.max_clock_skew_s)
        return [task_state_of(r, _running(r, now)) for r in rows if not names or r.name in names]

    async def history(self, name: str | None = None, limit: int = 50) -> list[RunEntry]:
        await asyncio.sleep(0)
        rows = [r for r in self.db.runs.values() if name is None or r.task_name == name]
        rows.sort(key=lambda r: (r.started, r.id), reverse=True)
        return [run_entry_of(r) for r in rows[:limit]]

    async def task_names(self) -> list[str]:
        await asyncio.sleep(0)
        return sorted(row.name for row in self.db.tasks.values())


def _sync(db: MemoryDatabase, decls: dict[str, TaskDeclaration]) -> SyncReport:
    """`sync_tasks` on the rows (the same rules as the SQL store's `TaskSet`)."""
    now = db.now()
    rows = {row.name: row for row in db.tasks.values()}
    report = SyncReport([], [], [], [], [])
    for name, d in decls.items():
        row = rows.get(name)
        ok = d.error is None and d.enabled
        target = TaskStatus.ACTIVE if ok else TaskStatus.DISABLED
        reason = d.error or (None if d.enabled else DISABLED_BY_CONFIG)
        if row is None:
            new = TaskRow(db.next_id(), name, target.value, d.schedule, now, now)
            new.set(dict(status_reason=reason, timeout_s=d.timeout_s))
            new.set(dict(next_run=d.first_run, planned_run=d.first_run))
            db.tasks[new.id] = new
            report.added.append(name)
            continue
        if row.status in (TaskStatus.ACTIVE, TaskStatus.REMOVED, TaskStatus.DISABLED):
            if row.status != target:
                (report.disabled if not ok else report.reactivated).append(name)
            if row.status != target or target == TaskStatus.DISABLED:
                row.set(dict(status=target.value, status_reason=reason, updated=now))
        if row.schedule != d.schedule and d.first_run is not None:
            row.set(dict(schedule=d.schedule, next_run=d.first_run, planned_run=d.first_run))
            row.set(dict(updated=now))
            report.replanned.append(name)
        if row.timeout_s != d.timeout_s:
            row.set(dict(timeout_s=d.timeout_s, updated=now))
    for name, row in rows.items():
        if name not in decls and row.status != TaskStatus.REMOVED:
            row.set(dict(status=TaskStatus.REMOVED.value, updated=now))
            report.removed.append(name)
    return report


if TYPE_CHECKING:  # mypy proves the implementation keeps the contract
    from cronloop.store.interface import Store

    _conforms: type[Store] = MemoryStore
