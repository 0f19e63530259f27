"""All of cronloop's domain SQL, spoken as verbs.

The supervisor and the CLI never write SQL; they call `sync_tasks`, `claim_due`, `renew`,
`complete`, `pause`, `trigger`... Every write about a run is conditional on the run's
lease token (fencing), and every lease time is the database's clock, so a worker that
lost its lease, or whose clock is wrong, cannot overwrite the new owner's state.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from worker.db import db_now, server_supports_skip_locked
from worker.models import runs, tasks
from worker.outcome import Outcome, TaskStatus
from worker.records import (
    Claim,
    RunEntry,
    RunRecord,
    SyncReport,
    TaskDeclaration,
    TaskState,
    TriggerResult,
    UnknownTask,
)
from worker.store_admin import AdminVerbs

__all__ = [
    "Claim",
    "RunEntry",
    "RunRecord",
    "SyncReport",
    "TaskDeclaration",
    "TaskState",
    "TaskStore",
    "TriggerResult",
    "UnknownTask",
    "make_worker_id",
]

T = tasks.c
R = runs.c


def make_worker_id() -> str:
    """host:pid:random, unique across restarts even when a PID is reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers with arbitrary UIDs)
        return str(os.getuid())


class TaskStore(AdminVerbs):
    """The SQLAlchemy implementation, for SQLite and MySQL/MariaDB."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        worker_id: str | None = None,
        lease_s: float = 30.0,
        quarantine_timeouts: int = 0,
    ):
        self.engine = engine
        self.worker_id = worker_id or make_worker_id()
        self.lease_s = lease_s
        # quarantine a task after this many timeouts in a row (0: never)
        self.quarantine_timeouts = quarantine_timeouts
        self._dialect = engine.dialect
        self._write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        self._skip_locked: bool | None = None
        self._user = _os_user()
        self._host = socket.gethostname()

    def _now(self, plus_s: float = 0.0) -> Any:
        return db_now(self._dialect, plus_s)

    async def database_now(self) -> datetime:
        """The database's clock, for lease arithmetic that must agree across hosts."""
        async with self.engine.connect() as conn:
            value: datetime = (await conn.execute(select(self._now()))).scalar_one()
        return value

    # -- the task set -------------------------------------------------------------

    async def sync_tasks(self, declared: Iterable[TaskDeclaration]) -> SyncReport:
        """Make the table match the tasks this worker knows (iTop's resync).

        New tasks get a row; rows whose code vanished become `removed`; tasks that come
        back become `active` again; operator states (paused, quarantined) are kept. A
        concurrent worker inserting the same row first is not an error: we retry once.
        """
        decls = {d.name: d for d in declared}
        for attempt in range(2):
            try:
                async with self._begin() as conn:
                    return await self._sync(conn, decls)
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _sync(self, conn: AsyncConnection, decls: dict[str, TaskDeclaration]) -> SyncReport:
        now = self._now()
        rows = {
            r.name: r
            for r in (await conn.execute(select(T.name, T.status, T.schedule, T.timeout_s)))
        }
        report = SyncReport([], [], [], [], [])
        for name, d in decls.items():
            row = rows.get(name)
            target = TaskStatus.ACTIVE if d.error is None and d.enabled else TaskStatus.DISABLED
            reason = d.error or (None if d.enabled else "disabled by configuration (enabled = 0)")
            if row is None:
                await conn.execute(
                    insert(tasks).values(
                        name=name,
                        status=target,
                        status_reason=reason,
                        schedule=d.schedule,
                        timeout_s=d.timeout_s,
                        next_run=d.first_run,
                        planned_run=d.first_run,
                        created=now,
                        updated=now,
                    )
                )
                report.added.append(name)
                continue
            values: dict[str, Any] = {}
            if row.status in (TaskStatus.ACTIVE, TaskStatus.REMOVED, TaskStatus.DISABLED):
                if row.status != target or target == TaskStatus.DISABLED:
                    values.update(status=target, status_reason=reason)
                if row.status != target:
                    bucket = (
                        report.disabled if target == TaskStatus.DISABLED else report.reactivated
                    )
                    bucket.append(name)
            if row.schedule != d.schedule and d.first_run is not None:
                values.update(schedule=d.schedule, next_run=d.first_run, planned_run=d.first_run)
                report.replanned.append(name)
            if row.timeout_s != d.timeout_s:
                values["timeout_s"] = d.timeout_s
            if values:
                values["updated"] = now
                await conn.execute(update(tasks).where(T.name == name).values(**values))
        gone = [n for n, r in rows.items() if n not in decls and r.status != TaskStatus.REMOVED]
        if gone:
            await conn.execute(
                update(tasks).where(T.name.in_(gone)).values(status=TaskStatus.REMOVED, updated=now)
            )
            report.removed.extend(gone)
        return report

    # -- claiming and running -------------------------------------------------------

    async def claim_due(
        self,
        now: datetime,
        limit: int,
        names: Sequence[str] | None = None,
        *,
        takeover: bool = True,
    ) -> list[Claim]:
        """Take up to `limit` due runs whose lease is free or expired.

        `takeover=False` leaves expired leases alone: just after a database outage their
        owners may be writing how those runs ended, and taking them over would run them
        twice.

        One short transaction: select the candidates (SKIP LOCKED where the server has it,
        so workers do not queue behind each other), then take each with an UPDATE that
        re-checks the conditions, so the claim is correct even without row locks. No lock
        is held once it returns. `names` restricts the claim to tasks this worker knows.
        """
        if limit <= 0:
            return []
        if self._skip_locked is None:
            self._skip_locked = await server_supports_skip_locked(self.engine)
        claimable = and_(
            T.status == TaskStatus.ACTIVE,
            T.next_run <= now,
            or_(T.lease_until.is_(None), T.lease_until < self._now())
            if takeover
            else T.lease_until.is_(None),
        )
        query = (
            select(
                T.id,
                T.name,
                T.next_run,
                T.planned_run,
                T.lease_token,
                T.run_id,
                T.consecutive_failures,
            )
            .where(claimable)
            .order_by(T.next_run)
            .limit(limit)
        )
        if names is not None:
            query = query.where(T.name.in_(list(names)))
        if self._skip_locked:
            query = query.with_for_update(skip_locked=True)
        async with self._begin() as conn:
            candidates = (await conn.execute(query)).all()
            claims = [c for row in candidates if (c := await self._take(conn, row, claimable))]
            await self._record_starts(conn, claims, now)
        return claims

    async def _take(self, conn: AsyncConnection, row: Any, claimable: Any) -> Claim | None:
        token = uuid.uuid4().hex
        run_id = str(uuid.uuid4())
        result = await conn.execute(
            update(tasks)
            .where(T.id == row.id, claimable)
            .values(
                owner=self.worker_id,
                lease_token=token,
                lease_until=self._now(self.lease_s),
                run_id=run_id,
                run_scheduled_for=row.next_run,
            )
        )
        if result.rowcount != 1:
            return None
        planned = row.planned_run
        return Claim(
            task_id=row.id,
            name=row.name,
            token=token,
            run_id=run_id,
            scheduled_for=row.next_run,
            planned_run=planned,
            triggered=planned is not None and row.next_run < planned,
            took_over=row.run_id if row.lease_token else None,
            consecutive_failures=row.consecutive_failures,
        )

    async def _record_starts(
        self, conn: AsyncConnection, claims: list[Claim], now: datetime
    ) -> None:
        if not claims:
            return
        abandoned = [c.took_over for c in claims if c.took_over]
        if abandoned:
            await conn.execute(
                update(runs)
                .where(R.run_id.in_(abandoned), R.outcome == Outcome.RUNNING)
                .values(
                    outcome=Outcome.ABANDONED,
                    ended=self._now(),
                    error="the worker running it was lost (crash or lease expired)",
                )
            )
        await conn.execute(
            insert(runs),
            [
                {
                    "run_id": c.run_id,
                    "task_name": c.name,
                    "scheduled_for": c.scheduled_for,
                    "started": now,
                    "outcome": Outcome.RUNNING,
                    "worker": self.worker_id,
                    "triggered": c.triggered,
                }
                for c in claims
            ],
        )

    async def renew(self, claims: Iterable[Claim]) -> set[str]:
        """Extend the leases of runs still owned; return the run ids whose lease was lost."""
        lost: set[str] = set()
        async with self._begin() as conn:
            for c in claims:
                result = await conn.execute(
                    update(tasks)
                    .where(T.id == c.task_id, T.lease_token == c.token)
                    .values(lease_until=self._now(self.lease_s))
                )
                if result.rowcount != 1:
                    lost.add(c.run_id)
        return lost

    async def complete(self, claim: Claim, record: RunRecord, *, keep_lease: bool = False) -> bool:
        """Write a run's outcome, statistics and next run, and free its lease.

        `keep_lease` records the run but keeps the lease: the task could not be stopped
        (a thread cannot be killed) and nobody may start it again until `free_lease`.
        Returns False, writing nothing, if the lease was lost: the new owner's state wins.
        Statistics are assigned before `run_count` because MySQL evaluates an UPDATE's
        assignments left to right, with the new values.
        """
        counted = record.outcome != Outcome.INTERRUPTED
        failure = record.outcome.is_failure
        d = record.duration_s
        assignments: list[tuple[Any, Any]] = [
            (T.latest_run_start, record.started),
            (T.latest_run_end, record.ended),
            (T.last_outcome, record.outcome.value),
            (T.last_message, record.message),
            (T.last_error, record.error),
            (T.last_user, self._user),
            (T.last_host, self._host),
            (T.next_run, record.next_run),
            (T.planned_run, record.planned_run),
            (T.first_run, func.coalesce(T.first_run, record.started)),
            (T.updated, self._now()),
        ]
        if not keep_lease:
            assignments += [(T.owner, None), (T.lease_token, None), (T.lease_until, None)]
        if record.outcome == Outcome.TIMED_OUT and self.quarantine_timeouts:
            assignments = self._quarantine_on_timeouts() + assignments
        if counted:
            assignments += [
                (T.latest_duration_s, d),
                (
                    T.min_duration_s,
                    case(
                        (or_(T.min_duration_s.is_(None), T.min_duration_s > d), d),
                        else_=T.min_duration_s,
                    ),
                ),
                (
                    T.max_duration_s,
                    case(
                        (or_(T.max_duration_s.is_(None), T.max_duration_s < d), d),
                        else_=T.max_duration_s,
                    ),
                ),
                (
                    T.avg_duration_s,
                    (func.coalesce(T.avg_duration_s, 0.0) * T.run_count + d) / (T.run_count + 1),
                ),
                (T.consecutive_failures, T.consecutive_failures + 1 if failure else 0),
                (
                    T.consecutive_timeouts,
                    T.consecutive_timeouts + 1 if record.outcome == Outcome.TIMED_OUT else 0,
                ),
                (T.run_count, T.run_count + 1),
            ]
        async with self._begin() as conn:
            result = await conn.execute(
                update(tasks)
                .where(T.id == claim.task_id, T.lease_token == claim.token)
                .ordered_values(*assignments)
            )
            if result.rowcount != 1:
                await conn.rollback()
                return False
            await conn.execute(
                update(runs)
                .where(R.run_id == claim.run_id)
                .values(
                    started=record.started,
                    ended=record.ended,
                    duration_s=d,
                    outcome=record.outcome.value,
                    message=record.message,
                    error=record.error,
                    missed=record.missed,
                )
            )
        return True

    async def release(self, claim: Claim) -> bool:
        """Give a claim back unrun (this worker cannot run that task): free the lease and
        mark its history row `skipped`."""
        async with self._begin() as conn:
            result = await conn.execute(
                update(tasks)
                .where(T.id == claim.task_id, T.lease_token == claim.token)
                .values(owner=None, lease_token=None, lease_until=None)
            )
            await conn.execute(
                update(runs)
                .where(R.run_id == claim.run_id)
                .values(outcome=Outcome.SKIPPED, ended=self._now(), error="released unrun")
            )
        return result.rowcount == 1

    def _quarantine_on_timeouts(self) -> list[tuple[Any, Any]]:
        """Status assignments that quarantine the task on its M-th timeout in a row.

        Placed before the counters are incremented: MySQL evaluates assignments left to
        right with the new values, SQLite with the old ones; this order reads the old
        counter on both.
        """
        limit = self.quarantine_timeouts
        trips = and_(T.status == TaskStatus.ACTIVE, T.consecutive_timeouts + 1 >= limit)
        reason = (
            f"timed out {limit} times in a row; fix the task or raise its timeout, then "
            "`cronloop resume` it"
        )
        return [
            (T.status_reason, case((trips, reason), else_=T.status_reason)),
            (T.status, case((trips, TaskStatus.QUARANTINED.value), else_=T.status)),
        ]

    async def free_lease(self, claim: Claim) -> bool:
        """Free a lease kept by `complete(keep_lease=True)` once the task really ended."""
        async with self._begin() as conn:
            result = await conn.execute(
                update(tasks)
                .where(T.id == claim.task_id, T.lease_token == claim.token)
                .values(owner=None, lease_token=None, lease_until=None)
            )
        return result.rowcount == 1

    async def reap_abandoned(self) -> int:
        """Close history rows of runs whose worker vanished, so history never shows a run
        as `running` forever, even for a task nobody claims again (paused, removed)."""
        async with self._begin() as conn:
            stale = (
                select(T.run_id)
                .where(T.lease_token.is_not(None), T.lease_until < self._now())
                .scalar_subquery()
            )
            result = await conn.execute(
                update(runs)
                .where(R.outcome == Outcome.RUNNING, R.run_id.in_(stale))
                .values(
                    outcome=Outcome.ABANDONED,
                    ended=self._now(),
                    error="the worker running it was lost (crash or lease expired)",
                )
            )
        return int(result.rowcount or 0)

    async def next_due(self, names: Sequence[str] | None = None) -> datetime | None:
        """The earliest next run among active tasks that are not running now, so the loop
        can sleep until then (a running task's past `next_run` must not wake it)."""
        query = select(func.min(T.next_run)).where(
            T.status == TaskStatus.ACTIVE,
            or_(T.lease_token.is_(None), T.lease_until < self._now()),
        )
        if names is not None:
            query = query.where(T.name.in_(list(names)))
        async with self.engine.connect() as conn:
            value: datetime | None = (await conn.execute(query)).scalar_one_or_none()
        return value
