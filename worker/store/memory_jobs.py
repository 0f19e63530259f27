"""The job queue in memory: the `JobStore` contract over `MemoryDatabase.jobs`, for fast
tests. The rows have the columns of `cronloop_job` (same names); leases use the memory
database's clock, fenced by token, like the task rows. Each verb yields to the loop once
and then runs without awaiting, so it is as atomic as a transaction. Knows no SQL.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cronloop.domain.jobs import (
    ACTIVE_STATES,
    JobClaim,
    JobCount,
    JobInfo,
    JobState,
    UnknownJob,
    args_json,
    check_job,
)
from cronloop.domain.records import Claim
from cronloop.store.interface import strikes_quarantine, takeover_quarantine_reason
from cronloop.store.memory_tables import MemoryDatabase, utc_only
from cronloop.store.rows import job_info_of


@dataclass
class JobRow:
    """One row of `cronloop_job`."""

    id: int
    kind: str
    args: str
    state: str
    priority: int
    run_at: datetime
    created: datetime
    attempts: int = 0
    strikes: int = 0
    max_retries: int | None = None
    unique_key: str | None = None
    owner: str | None = None
    lease_token: str | None = None
    lease_until: datetime | None = None
    last_error: str | None = None
    finished: datetime | None = None

    @property
    def active_key(self) -> str | None:
        return self.unique_key if self.state in ACTIVE_STATES else None

    def free_lease(self) -> None:
        self.owner = self.lease_token = self.lease_until = None


class MemoryJobs:
    """`JobStore` over a `MemoryDatabase` (its `jobs` rows)."""

    max_clock_skew_s: float = 0.0  # an expired lease is taken over only this much later

    def __init__(
        self, db: MemoryDatabase, worker_id: str, lease_s: float, quarantine_strikes: int = 0
    ) -> None:
        self.db = db
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.quarantine_strikes = quarantine_strikes

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
        await asyncio.sleep(0)
        check_job(kind, unique_key, priority, max_retries, run_at)
        text = args_json(kind, dict(args) if isinstance(args, Mapping) else args)
        if unique_key is not None:
            for row in self.db.jobs.values():
                if row.kind == kind and row.active_key == unique_key:
                    return row.id
        now = self.db.now()
        row = JobRow(
            id=self.db.next_id(),
            kind=kind,
            args=text,
            state=JobState.PLANNED.value,
            priority=priority,
            run_at=utc_only(run_at) if run_at is not None else now,
            created=now,
            max_retries=max_retries,
            unique_key=unique_key,
        )
        self.db.jobs[row.id] = row
        return row.id

    def _due(self, row: JobRow, now: datetime, takeover: bool) -> bool:
        if row.state == JobState.PLANNED:
            return row.run_at <= now
        return (
            takeover
            and row.state == JobState.RUNNING
            and (row.lease_until is None or row.lease_until < self.db.now(-self.max_clock_skew_s))
        )

    async def acquire_jobs(
        self,
        now: datetime,
        limit: int,
        slots: Mapping[str, int | None],
        *,
        takeover: bool = True,
        suspects: int | None = None,
    ) -> list[JobClaim]:
        await asyncio.sleep(0)
        utc_only(now)
        left = dict(slots)
        candidates = sorted(
            (r for r in self.db.jobs.values() if r.kind in slots and self._due(r, now, takeover)),
            key=lambda r: (-r.priority, r.run_at, r.id),
        )
        token = uuid.uuid4().hex[:24]
        claims: list[JobClaim] = []
        for row in candidates:
            if len(claims) >= limit:
                break
            free = left.get(row.kind)
            if free is not None and free <= 0:
                continue
            took_over = row.state == JobState.RUNNING
            if took_over and self._quarantines(row):
                continue
            if took_over or row.strikes > 0:  # a suspect (`queue.is_suspect`)
                if suspects is not None and suspects <= 0:
                    continue
                suspects = None if suspects is None else suspects - 1
            if free is not None:
                left[row.kind] = free - 1
            row.strikes += 1 if took_over else 0
            row.state = JobState.RUNNING.value
            row.owner, row.lease_token = self.worker_id, token
            row.lease_until = self.db.now(self.lease_s)
            row.attempts += 1
            claims.append(
                JobClaim(
                    job_id=row.id,
                    kind=row.kind,
                    args=json.loads(row.args),
                    token=token,
                    run_id=f"{token}-{row.id}",
                    run_at=row.run_at,
                    attempts=row.attempts,
                    max_retries=row.max_retries,
                    took_over=took_over,
                    strikes=row.strikes,
                )
            )
        return claims

    def _quarantines(self, row: JobRow) -> bool:
        """`queue.acquire`'s rule: this takeover would be the row's
        `quarantine_strikes`-th strike, so the row is quarantined instead."""
        if not strikes_quarantine(row, self.quarantine_strikes):
            return False
        row.free_lease()
        row.strikes += 1
        row.state = JobState.QUARANTINED.value
        row.last_error = takeover_quarantine_reason(row.strikes)
        return True

    async def renew_jobs(self, claims: Iterable[Claim]) -> set[str]:
        await asyncio.sleep(0)
        lost = set()
        for claim in claims:
            row = self.db.jobs.get(claim.task_id)
            if row is None or row.lease_token != claim.token:
                lost.add(claim.run_id)
            else:
                row.lease_until = self.db.now(self.lease_s)
        return lost

    async def _fenced(self, claim: JobClaim, **values: Any) -> bool:
        await asyncio.sleep(0)
        row = self.db.jobs.get(claim.job_id)
        if row is None or row.lease_token != claim.token:
            return False
        row.free_lease()
        for key, value in values.items():
            setattr(row, key, value)
        return True

    async def complete_job(self, claim: JobClaim) -> bool:
        return await self._fenced(claim, state=JobState.DONE.value, finished=self.db.now())

    async def complete_jobs(self, claims: Sequence[JobClaim]) -> list[bool]:
        await asyncio.sleep(0)
        landed = []
        for claim in claims:
            row = self.db.jobs.get(claim.job_id)
            ok = row is not None and row.lease_token == claim.token
            if row is not None and ok:
                row.free_lease()
                row.state, row.finished = JobState.DONE.value, self.db.now()
            landed.append(ok)
        return landed

    async def fail_job(self, claim: JobClaim, error: str, retry_at: datetime | None) -> bool:
        if retry_at is not None:
            return await self._fenced(
                claim, state=JobState.PLANNED.value, run_at=utc_only(retry_at), last_error=error
            )
        return await self._fenced(
            claim, state=JobState.ERROR.value, finished=self.db.now(), last_error=error
        )

    async def release_job(self, claim: JobClaim) -> bool:
        row = self.db.jobs.get(claim.job_id)
        attempts = max((row.attempts if row else 1) - 1, 0)
        return await self._fenced(claim, state=JobState.PLANNED.value, attempts=attempts)

    def _row(self, job_id: int) -> JobRow:
        row = self.db.jobs.get(job_id)
        if row is None:
            raise UnknownJob(job_id)
        return row

    async def cancel_job(self, job_id: int) -> JobState:
        await asyncio.sleep(0)
        row = self._row(job_id)
        old = JobState(row.state)
        if old == JobState.PLANNED:
            row.state, row.finished = JobState.CANCELLED.value, self.db.now()
        return old

    async def retry_job(self, job_id: int, now: datetime) -> JobState:
        await asyncio.sleep(0)
        row = self._row(job_id)
        old = JobState(row.state)
        if old not in (JobState.ERROR, JobState.CANCELLED, JobState.QUARANTINED):
            return old
        if row.unique_key is not None and any(
            o.kind == row.kind and o.active_key == row.unique_key for o in self.db.jobs.values()
        ):
            raise ValueError(
                f"job {job_id}: another job with its unique key is waiting; not retried"
            )
        row.state, row.run_at, row.attempts, row.strikes, row.finished = (
            JobState.PLANNED.value,
            utc_only(now),
            0,
            0,
            None,
        )
        return old

    async def job_counts(self) -> list[JobCount]:
        await asyncio.sleep(0)
        groups: dict[tuple[str, str], list[JobRow]] = {}
        for row in self.db.jobs.values():
            groups.setdefault((row.kind, row.state), []).append(row)
        return [
            JobCount(kind, JobState(state), len(rows), min(r.run_at for r in rows))
            for (kind, state), rows in sorted(groups.items())
        ]

    async def prune_jobs(self, before: datetime, limit: int) -> int:
        await asyncio.sleep(0)
        ended = (JobState.DONE, JobState.CANCELLED)
        due = [
            r.id
            for r in self.db.jobs.values()
            if r.state in ended and r.finished is not None and r.finished < utc_only(before)
        ][:limit]
        for job_id in due:
            del self.db.jobs[job_id]
        return len(due)

    async def job_info(self, job_id: int) -> JobInfo:
        await asyncio.sleep(0)
        r = self._row(job_id)
        return job_info_of(r)
