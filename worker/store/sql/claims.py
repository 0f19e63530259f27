"""Claims and the idle probe: the hot path's domain SQL (leases held: `leases`).

A part of `SqlStore` (see `cronloop.store.interface.Store` for the contract). Every write
about a run is conditional on the run's lease token (fencing), and every lease time is
the database's clock, so a worker that lost its lease, or whose clock is wrong, cannot
overwrite the new owner's state. Knows nothing of asyncio tasks or deadlines.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import String, and_, bindparam, cast, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

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
from cronloop.store.interface import ABANDONED_ERROR
from cronloop.store.rows import claim_of
from cronloop.store.sql.batch import MultiInsert
from cronloop.store.sql.connector import Connector
from cronloop.store.sql.tables import UTCDateTime, runs, tasks

if TYPE_CHECKING:  # the old home of these names, until every importer uses cronloop.store
    from cronloop.store.sql.store import TaskStore

__all__ = [
    "Claim",
    "ClaimBatch",
    "Claims",
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


class Claims:
    """`claim_next` / `claim_due`, and `next_due`: what is free to claim, and when."""

    def __init__(self, db: Connector, worker_id: str, lease_s: float) -> None:
        self.db = db
        self.worker_id = worker_id
        self.lease_s = lease_s
        self._run_insert = MultiInsert(runs, db.dialect)
        self._claim_sql: dict[Any, tuple[Any, Any]] = {}  # see _claim_statements

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
        skip_locked = await self.db.skip_locked()
        select_due, take = self._claim_statements(limit, takeover, names, skip_locked)
        async with self.db.begin() as conn:
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
        self, limit: int, takeover: bool, names: Sequence[str] | None, skip_locked: bool
    ) -> tuple[Any, Any]:
        """The claim's SELECT and UPDATE, built once per shape and reused: building and
        hashing a statement costs SQLAlchemy more than sending it, at every wake-up."""
        key = (limit, takeover, tuple(names) if names is not None else None)
        cached = self._claim_sql.get(key)
        if cached is not None:
            return cached
        lease_free = or_(T.lease_until.is_(None), T.lease_until < self.db.expired_before())
        available = and_(
            T.status == TaskStatus.ACTIVE, lease_free if takeover else T.lease_until.is_(None)
        )
        if names is not None:
            available = and_(available, T.name.in_(list(names)))
        # a row with no next run is never due (NULL would sort first and stop the claim)
        ready = and_(available, T.next_run.is_not(None))
        select_due = select(*CLAIM_COLUMNS).where(ready).order_by(T.next_run)
        select_due = select_due.limit(limit + 1)
        if skip_locked:
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
                lease_until=self.db.now(self.lease_s),
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
        return [claim_of(row, token) for row in candidates]

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
                    ended=self.db.now(),
                    error=ABANDONED_ERROR,
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
            or_(T.lease_token.is_(None), T.lease_until < self.db.expired_before()),
        )
        if names is not None:
            query = query.where(T.name.in_(list(names)))
        for attempt in (1, 2):
            conn = await self.db.probe()
            try:
                value: datetime | None = (await conn.execute(query)).scalar_one_or_none()
                return value
            except Exception:
                await self.db.drop_probe()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def __getattr__(name: str) -> Any:
    """`TaskStore` moved to `cronloop.store.sql.store`; this keeps the old import working
    while the runtime and the CLI move to `cronloop.store` (lazy: no import cycle)."""
    if name == "TaskStore":
        from cronloop.store.sql.store import TaskStore

        return TaskStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
