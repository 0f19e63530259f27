"""All of cronloop's domain SQL, spoken as verbs.

The supervisor and the CLI never write SQL; they call `sync_tasks`, `claim_next`, `renew`,
`complete_many`, `pause`, `trigger`... This module has the task set, claims, leases and
the idle probe; recording is in `store_record.py`, the operator verbs in
`store_admin.py`, the batch statements' SQL text in `store_batch.py`. Every write about a
run is conditional on the run's lease token (fencing), and every lease time is the
database's clock, so a worker that lost its lease, or whose clock is wrong, cannot
overwrite the new owner's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import socket
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, and_, bindparam, cast, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

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
    UnknownTask,
)
from cronloop.store.sql.batch import (
    CaseUpdate,
    MultiInsert,
)
from cronloop.store.sql.engine import db_now, server_supports_skip_locked
from cronloop.store.sql.record import RecordVerbs
from cronloop.store.sql.tables import UTCDateTime, runs, tasks

__all__ = [
    "Claim",
    "ClaimBatch",
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

# what a claim reads of a row: enough to plan the next run and compute the statistics
CLAIM_COLUMNS = (
    T.id,
    T.name,
    T.next_run,
    T.planned_run,
    T.lease_token,
    T.run_id,
    T.consecutive_failures,
    T.consecutive_timeouts,
    T.run_count,
    T.min_duration_s,
    T.max_duration_s,
    T.avg_duration_s,
    T.first_run,
)


def make_worker_id() -> str:
    """host:pid:random, unique across restarts even when a PID is reused."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _claim_of(row: Any, token: str) -> Claim:
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


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers with arbitrary UIDs)
        return str(os.getuid())


class TaskStore(RecordVerbs):
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
        # bounded to their columns: a long USER must not make every recording refused
        self._who = {"last_user": self._user[:64], "last_host": self._host[:255]}
        self._task_update = CaseUpdate(tasks, "id", engine.dialect)
        self._run_insert = MultiInsert(runs, engine.dialect)
        self._run_update = CaseUpdate(runs, "run_id", engine.dialect)
        self._stamp: list[str] | None = None
        self._probe: AsyncConnection | None = None  # see next_due
        self._claim_sql: dict[Any, tuple[Any, Any]] = {}  # see _claim_statements

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
        """Take up to `limit` due runs whose lease is free or expired (see `claim_next`)."""
        batch = await self.claim_next(now, limit, names, takeover=takeover)
        return batch.claims

    async def claim_next(
        self,
        now: datetime,
        limit: int,
        names: Sequence[str] | None = None,
        *,
        takeover: bool = True,
    ) -> ClaimBatch:
        """Take up to `limit` due runs whose lease is free or expired, and say when the
        next one is due, so the loop can sleep until then without asking again.

        `takeover=False` leaves expired leases alone: just after a database outage their
        owners may be writing how those runs ended, and taking them over would run them
        twice.

        One short transaction: select the `limit + 1` earliest available rows (SKIP
        LOCKED where the server has it, so workers do not queue behind each other); those
        due are taken with one UPDATE that re-checks the conditions, so the claim is
        correct even without row locks; the first row not taken tells when the next run is
        due. No lock is held once it returns. `names` restricts the claim to tasks this
        worker knows.
        """
        if limit <= 0:
            return ClaimBatch([], None)
        if self._skip_locked is None:
            self._skip_locked = await server_supports_skip_locked(self.engine)
        select_due, take = self._claim_statements(limit, takeover, names)
        async with self._begin() as conn:
            rows = (await conn.execute(select_due)).all()
            due = [row for row in rows[:limit] if row.next_run <= now]
            rest = rows[len(due) :]
            next_due = rest[0].next_run if rest else None
            if not due:
                return ClaimBatch([], next_due)
            claims = await self._take(conn, due, take, now)
            await self._record_starts(conn, claims, now)
        return ClaimBatch(claims, next_due)

    def _claim_statements(
        self, limit: int, takeover: bool, names: Sequence[str] | None
    ) -> tuple[Any, Any]:
        """The claim's SELECT and UPDATE, built once per shape and reused: building and
        hashing a statement costs SQLAlchemy more than sending it, at every wake-up."""
        key = (limit, takeover, tuple(names) if names is not None else None)
        cached = self._claim_sql.get(key)
        if cached is not None:
            return cached
        lease_free = or_(T.lease_until.is_(None), T.lease_until < self._now())
        available = and_(
            T.status == TaskStatus.ACTIVE, lease_free if takeover else T.lease_until.is_(None)
        )
        if names is not None:
            available = and_(available, T.name.in_(list(names)))
        select_due = select(*CLAIM_COLUMNS).where(available).order_by(T.next_run)
        select_due = select_due.limit(limit + 1)
        if self._skip_locked:
            select_due = select_due.with_for_update(skip_locked=True)
        take = (
            update(tasks)
            .where(
                T.id.in_(bindparam("ids", expanding=True)),
                available,
                T.next_run <= bindparam("now", type_=UTCDateTime()),
            )
            .values(
                owner=self.worker_id,
                lease_token=bindparam("token", type_=String()),
                lease_until=self._now(self.lease_s),
                run_id=bindparam("prefix", type_=String()) + cast(T.id, String),
                run_scheduled_for=T.next_run,
            )
        )
        if len(self._claim_sql) < 1000:
            self._claim_sql[key] = (select_due, take)
        return select_due, take

    async def _take(
        self, conn: AsyncConnection, candidates: Sequence[Any], take: Any, now: datetime
    ) -> list[Claim]:
        """Lease every candidate with one UPDATE that re-checks the conditions.

        The batch shares one random token; (row id, token) is what fences each run, and
        the run id is `<token>-<row id>`. Where the candidates were locked (SKIP LOCKED,
        or SQLite's single writer) all of them are taken; otherwise a concurrent worker
        may have won some, and a SELECT says which rows carry our token.
        """
        token = uuid.uuid4().hex[:24]
        ids = [row.id for row in candidates]
        result = await conn.execute(
            take, {"ids": ids, "now": now, "token": token, "prefix": f"{token}-"}
        )
        if result.rowcount != len(ids):
            ours = select(T.id).where(T.id.in_(ids), T.lease_token == token)
            taken = set((await conn.execute(ours)).scalars())
            candidates = [row for row in candidates if row.id in taken]
        return [_claim_of(row, token) for row in candidates]

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
        sql, params = self._run_insert.build(
            [
                {
                    "run_id": c.run_id,
                    "task_name": c.name,
                    "scheduled_for": c.scheduled_for,
                    "started": now,
                    "outcome": Outcome.RUNNING.value,
                    "worker": self.worker_id,
                    "triggered": c.triggered,
                }
                for c in claims
            ]
        )
        await conn.exec_driver_sql(sql, tuple(params))

    async def renew(self, claims: Iterable[Claim]) -> set[str]:
        """Extend the leases of runs still owned; return the run ids whose lease was lost.

        One UPDATE for all (tokens are random per claim batch, so `id IN ... AND token
        IN ...` matches only our rows), and a SELECT only if some row did not match."""
        claims = list(claims)
        if not claims:
            return set()
        ids = [c.task_id for c in claims]
        tokens = sorted({c.token for c in claims})
        mine = and_(T.id.in_(ids), T.lease_token.in_(tokens))
        async with self._begin() as conn:
            result = await conn.execute(
                update(tasks).where(mine).values(lease_until=self._now(self.lease_s))
            )
            if result.rowcount == len(claims):
                return set()
            rows = await conn.execute(select(T.id, T.lease_token).where(mine))
            held = {(r.id, r.lease_token) for r in rows}
        return {c.run_id for c in claims if (c.task_id, c.token) not in held}

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
        can sleep until then (a running task's past `next_run` must not wake it).

        This is the idle worker's only query, once per `poll_interval`: it goes through a
        connection kept open in autocommit mode, so that it costs one statement and no
        COMMIT/ROLLBACK or pool check-out around it. A kept connection that broke (the
        server restarted) is replaced once before the error is reported.
        """
        query = select(func.min(T.next_run)).where(
            T.status == TaskStatus.ACTIVE,
            or_(T.lease_token.is_(None), T.lease_until < self._now()),
        )
        if names is not None:
            query = query.where(T.name.in_(list(names)))
        for attempt in (1, 2):
            conn = await self._probe_connection()
            try:
                value: datetime | None = (await conn.execute(query)).scalar_one_or_none()
                return value
            except Exception:
                await self._drop_probe()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _probe_connection(self) -> AsyncConnection:
        if self._probe is None:
            conn = await self.engine.connect()
            self._probe = await conn.execution_options(isolation_level="AUTOCOMMIT")
        return self._probe

    async def _drop_probe(self) -> None:
        conn, self._probe = self._probe, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        """Return the kept connection; the engine is disposed by its owner."""
        await self._drop_probe()
