"""The job queue's SQL (`cronloop_job`): enqueue, acquire, finish, and the operator verbs.

A part of `SqlStore` (contract: `cronloop.store.interface.JobStore`). Leases are the
task table's mechanism on another table: the database clock, a random token per
acquisition that fences every write, renewal through `leases.renew_fenced`. Acquiring is
`queue.acquire` (the one claim of queued work, the email outbox's too): one short
transaction, takeovers struck and quarantined at `quarantine_strikes`.
`insert_job` is also the public `cronloop.enqueue`'s statement. Knows nothing of asyncio
tasks or deadlines.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Dialect, and_, func, select, update
from sqlalchemy.dialects import mysql, sqlite
from sqlalchemy.exc import IntegrityError

from cronloop.domain.jobs import (
    JobClaim,
    JobCount,
    JobInfo,
    JobState,
    UnknownJob,
    args_json,
    check_job,
)
from cronloop.domain.records import Claim
from cronloop.store.rows import job_info_of
from cronloop.store.sql.connector import Connector
from cronloop.store.sql.leases import renew_fenced
from cronloop.store.sql.queue import QueueShape, acquire
from cronloop.store.sql.tables import jobs

J = jobs.c
#: the job table as a queue: the shape `queue.acquire` claims
JOB_QUEUE = QueueShape(jobs, order=("-priority", "run_at", "id"))
_NO_LEASE = JOB_QUEUE.no_lease()
log = structlog.get_logger("cronloop.jobs")


def job_row(
    kind: str,
    args: Mapping[str, Any] | None,
    *,
    run_at: datetime | None,
    priority: int,
    unique_key: str | None,
    max_retries: int | None,
) -> dict[str, Any]:
    """A new job's column values, checked (ValueError names the field)."""
    check_job(kind, unique_key, priority, max_retries, run_at)
    now = datetime.now(UTC)
    return {
        "kind": kind,
        "args": args_json(kind, dict(args) if isinstance(args, Mapping) else args),
        "state": JobState.PLANNED.value,
        "priority": priority,
        "run_at": run_at or now,
        "attempts": 0,
        "max_retries": max_retries,
        "unique_key": unique_key,
        "created": now,
    }


async def insert_job(conn: Any, dialect: Dialect, row: dict[str, Any]) -> int:
    """Insert `row` on `conn` (an AsyncConnection or AsyncSession, in its transaction);
    the new id, or with a unique key held by a waiting job, that job's id. The duplicate
    is skipped by the database (`INSERT OR IGNORE` / `INSERT IGNORE`, on the unique index
    over (kind, active_key)), so the caller's transaction is never broken by it."""
    if row["unique_key"] is None:
        result = await conn.execute(jobs.insert().values(**row))
        return int(result.inserted_primary_key[0])
    if dialect.name == "sqlite":
        statement: Any = sqlite.insert(jobs).values(**row).on_conflict_do_nothing()
    else:  # the values were checked first: IGNORE can only skip the duplicate
        statement = mysql.insert(jobs).values(**row).prefix_with("IGNORE")
    result = await conn.execute(statement)
    if result.rowcount == 1:
        return int(result.inserted_primary_key[0])
    existing = await conn.execute(
        select(J.id).where(J.kind == row["kind"], J.active_key == row["unique_key"])
    )
    return int(existing.scalar_one())


class SqlJobs:
    """The `JobStore` verbs over one `Connector`."""

    def __init__(
        self, db: Connector, worker_id: str, lease_s: float, quarantine_strikes: int = 0
    ) -> None:
        self.db = db
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.quarantine_strikes = quarantine_strikes  # 0: never quarantine

    async def enqueue_job(
        self,
        kind: str,
        args: Mapping[str, Any] | None = None,
        *,
        run_at: datetime | None = None,
        priority: int = 0,
        unique_key: str | None = None,
        max_retries: int | None = None,
    ) -> int:
        row = job_row(
            kind,
            args,
            run_at=run_at,
            priority=priority,
            unique_key=unique_key,
            max_retries=max_retries,
        )
        async with self.db.begin() as conn:
            return await insert_job(conn, self.db.dialect, row)

    async def acquire_jobs(
        self,
        now: datetime,
        limit: int,
        slots: Mapping[str, int | None],
        *,
        takeover: bool = True,
        suspects: int | None = None,
    ) -> list[JobClaim]:
        kinds = [k for k, free in slots.items() if free is None or free > 0]
        if limit <= 0 or not kinds:
            return []
        token = uuid.uuid4().hex[:24]
        skip_locked = await self.db.skip_locked()
        async with self.db.begin() as conn:
            got = await acquire(
                conn,
                self.db.dialect,
                JOB_QUEUE,
                columns=(J.kind, J.args, J.run_at, J.attempts, J.max_retries),
                where=J.kind.in_(kinds),
                now=now,
                limit=limit,
                owner=self.worker_id,
                token=token,
                lease_s=self.lease_s,
                skip_locked=skip_locked,
                takeover=takeover,
                quarantine_strikes=self.quarantine_strikes,
                suspects=suspects,
                pick=lambda rows: _within_slots(rows, slots),
                expired_before=self.db.expired_before(),
            )
        for job_id, strikes in got.quarantined:
            log.error("job quarantined: its worker was lost", job_id=job_id, strikes=strikes)
        return [
            JobClaim(
                job_id=r.id,
                kind=r.kind,
                args=json.loads(r.args),
                token=token,
                run_id=f"{token}-{r.id}",
                run_at=r.run_at,
                attempts=r.attempts + 1,
                max_retries=r.max_retries,
                took_over=got.took_over(JOB_QUEUE, r),
                strikes=r.strikes + (1 if got.took_over(JOB_QUEUE, r) else 0),
            )
            for r in got.rows
        ]

    async def renew_jobs(self, claims: Iterable[Claim]) -> set[str]:
        return await renew_fenced(self.db, jobs, self.lease_s, claims)

    async def _fenced(self, claim: JobClaim, **values: Any) -> bool:
        async with self.db.begin() as conn:
            result = await conn.execute(
                update(jobs)
                .where(J.id == claim.job_id, J.lease_token == claim.token)
                .values(**_NO_LEASE, **values)
            )
        return bool(result.rowcount == 1)

    async def complete_job(self, claim: JobClaim) -> bool:
        return await self._fenced(claim, state=JobState.DONE.value, finished=self.db.now())

    async def complete_jobs(self, claims: Sequence[JobClaim]) -> list[bool]:
        """One SELECT of the rows still held (locked), one UPDATE of those."""
        if not claims:
            return []
        ids = [c.job_id for c in claims]
        mine = and_(J.id.in_(ids), J.lease_token.in_(sorted({c.token for c in claims})))
        async with self.db.begin() as conn:
            rows = await conn.execute(select(J.id, J.lease_token).where(mine).with_for_update())
            held = {(r.id, r.lease_token) for r in rows}
            landed = [(c.job_id, c.token) in held for c in claims]
            done_ids = [c.job_id for c, ok in zip(claims, landed, strict=True) if ok]
            if done_ids:
                await conn.execute(
                    update(jobs)
                    .where(J.id.in_(done_ids), mine)
                    .values(**_NO_LEASE, state=JobState.DONE.value, finished=self.db.now())
                )
        return landed

    async def fail_job(self, claim: JobClaim, error: str, retry_at: datetime | None) -> bool:
        if retry_at is not None:
            return await self._fenced(
                claim, state=JobState.PLANNED.value, run_at=retry_at, last_error=error
            )
        return await self._fenced(
            claim, state=JobState.ERROR.value, finished=self.db.now(), last_error=error
        )

    async def release_job(self, claim: JobClaim) -> bool:
        # attempts >= 1 while the lease is held: the acquisition counted this one
        return await self._fenced(claim, state=JobState.PLANNED.value, attempts=J.attempts - 1)

    async def _change_state(
        self, job_id: int, allowed: tuple[JobState, ...], **values: Any
    ) -> JobState:
        async with self.db.begin() as conn:
            old = (await conn.execute(select(J.state).where(J.id == job_id))).scalar()
            if old is None:
                raise UnknownJob(job_id)
            if JobState(old) in allowed:
                await conn.execute(
                    update(jobs).where(J.id == job_id, J.state == old).values(**values)
                )
        return JobState(old)

    async def cancel_job(self, job_id: int) -> JobState:
        return await self._change_state(
            job_id, (JobState.PLANNED,), state=JobState.CANCELLED.value, finished=self.db.now()
        )

    async def retry_job(self, job_id: int, now: datetime) -> JobState:
        try:
            return await self._change_state(
                job_id,
                (JobState.ERROR, JobState.CANCELLED, JobState.QUARANTINED),
                state=JobState.PLANNED.value,
                run_at=now,
                attempts=0,
                strikes=0,
                finished=None,
            )
        except IntegrityError:
            raise ValueError(
                f"job {job_id}: another job with its unique key is waiting; not retried"
            ) from None

    async def job_counts(self) -> list[JobCount]:
        query = (
            select(J.kind, J.state, func.count(), func.min(J.run_at))
            .group_by(J.kind, J.state)
            .order_by(J.kind, J.state)
        )
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [JobCount(r[0], JobState(r[1]), int(r[2]), _aware(r[3])) for r in rows]

    async def job_info(self, job_id: int) -> JobInfo:
        async with self.db.connect() as conn:
            r = (await conn.execute(select(jobs).where(J.id == job_id))).one_or_none()
        if r is None:
            raise UnknownJob(job_id)
        return job_info_of(r)

    async def prune_jobs(self, before: datetime, limit: int) -> int:
        ended = (JobState.DONE.value, JobState.CANCELLED.value)
        due = select(J.id).where(J.state.in_(ended), J.finished < before).limit(limit)
        async with self.db.begin() as conn:
            ids = list((await conn.execute(due)).scalars())
            if ids:
                await conn.execute(jobs.delete().where(J.id.in_(ids)))
        return len(ids)


def _within_slots(rows: Iterable[Any], slots: Mapping[str, int | None]) -> list[Any]:
    """The candidates, at most `slots[kind]` of each kind (None: no cap), in order."""
    left = dict(slots)
    chosen = []
    for row in rows:
        free = left.get(row.kind)
        if free is None:
            chosen.append(row)
        elif free > 0:
            left[row.kind] = free - 1
            chosen.append(row)
    return chosen


def _aware(value: Any) -> datetime | None:
    """An aggregate loses the column type: SQLite gives text, MySQL a naive datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC)
