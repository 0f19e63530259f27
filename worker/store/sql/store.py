"""The SQL store (SQLite, MySQL/MariaDB): one class composed of parts.

`SqlStore` keeps no SQL of its own: it wires one `Connector` (engine, database clock,
SQLite write lock, the probe's kept connection) into the parts and offers their verbs as
`cronloop.store.interface.Store`:

- `taskset.TaskSet`: `sync_tasks`
- `claims.Claims`: `claim_next`, `claim_due`, `next_due`
- `leases.Leases`: `renew`, `release`, `free_lease`, `reap_abandoned`
- `record.Recording`: `complete`, `complete_many` (quarantine on repeated timeouts)
- `quarantine.Quarantine`: `strike` (the watchdog's road to quarantine)
- `admin.AdminVerbs`: `pause`, `resume`, `trigger`, `status`, `history`, `task_names`
- `jobs.SqlJobs`: the job queue (`JobStore`): `enqueue_job`, `acquire_jobs`, `renew_jobs`,
  `complete_job`, `fail_job`, `release_job`, `cancel_job`, `retry_job`, `job_counts`, `job_info`

Knows nothing of asyncio tasks, deadlines or the loop.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop.domain.jobs import JobClaim, JobCount, JobInfo, JobState
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
from cronloop.store.interface import Ended
from cronloop.store.sql.admin import AdminVerbs
from cronloop.store.sql.claims import Claims, make_worker_id
from cronloop.store.sql.connector import Connector
from cronloop.store.sql.engine import create_short_lived_engine
from cronloop.store.sql.errors import classify
from cronloop.store.sql.jobs import SqlJobs
from cronloop.store.sql.leases import Leases
from cronloop.store.sql.quarantine import Quarantine
from cronloop.store.sql.record import Recording
from cronloop.store.sql.taskset import TaskSet

__all__ = ["SqlStore", "TaskStore"]


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers with arbitrary UIDs)
        return str(os.getuid())


class SqlStore:
    """`Store` over an SQLAlchemy asyncio engine; the engine's owner disposes it."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        worker_id: str | None = None,
        lease_s: float = 30.0,
        quarantine_timeouts: int = 0,
        max_clock_skew_s: float = 0.0,
        quarantine_strikes: int = 0,
    ) -> None:
        self.engine = engine
        self._db = Connector(engine, max_clock_skew_s=max_clock_skew_s)
        self._taskset = TaskSet(self._db)
        self._claims = Claims(self._db, worker_id or make_worker_id(), lease_s)
        self._leases = Leases(self._db, lease_s)
        # bounded to their columns: a long USER must not make every recording refused
        who = {"last_user": _os_user()[:64], "last_host": socket.gethostname()[:255]}
        self._recording = Recording(self._db, who, quarantine_timeouts)
        self._quarantine = Quarantine(self._db)
        self._admin = AdminVerbs(self._db)
        self._jobs = SqlJobs(self._db, self._claims.worker_id, lease_s, quarantine_strikes)

    @property
    def worker_id(self) -> str:
        return self._claims.worker_id

    @property
    def lease_s(self) -> float:
        return self._claims.lease_s

    @property
    def quarantine_timeouts(self) -> int:
        """Timeouts in a row that quarantine a task (0: never); settable live."""
        return self._recording.quarantine_timeouts

    @quarantine_timeouts.setter
    def quarantine_timeouts(self, value: int) -> None:
        self._recording.quarantine_timeouts = value

    async def database_now(self) -> datetime:
        async with self._db.connect() as conn:
            value: datetime = (await conn.execute(select(self._db.now()))).scalar_one()
        return value

    async def close(self) -> None:
        """Return the probe's kept connection."""
        await self._db.drop_probe()

    def classify_error(self, exc: BaseException) -> ErrorKind:
        return classify(exc)

    # -- the verbs, as the parts implement them (contracts: `Store`) ----------------------

    async def sync_tasks(self, declared: Iterable[TaskDeclaration]) -> SyncReport:
        return await self._taskset.sync_tasks(declared)

    async def claim_next(
        self,
        now: datetime,
        limit: int,
        names: Sequence[str] | None = None,
        *,
        takeover: bool = True,
    ) -> ClaimBatch:
        return await self._claims.claim_next(now, limit, names, takeover=takeover)

    async def claim_due(
        self,
        now: datetime,
        limit: int,
        names: Sequence[str] | None = None,
        *,
        takeover: bool = True,
    ) -> list[Claim]:
        return await self._claims.claim_due(now, limit, names, takeover=takeover)

    async def renew(self, claims: Iterable[Claim]) -> set[str]:
        return await self._leases.renew(claims)

    async def release(self, claim: Claim) -> bool:
        return await self._leases.release(claim)

    async def free_lease(self, claim: Claim) -> bool:
        return await self._leases.free_lease(claim)

    async def reap_abandoned(self) -> int:
        return await self._leases.reap_abandoned()

    async def next_due(self, names: Sequence[str] | None = None) -> datetime | None:
        return await self._claims.next_due(names)

    async def complete(self, claim: Claim, record: RunRecord, *, keep_lease: bool = False) -> bool:
        return await self._recording.complete(claim, record, keep_lease=keep_lease)

    async def complete_many(self, ended: Sequence[Ended]) -> list[bool]:
        return await self._recording.complete_many(ended)

    async def strike(self, names: Sequence[str], reason: str, quarantine_strikes: int) -> list[str]:
        return await self._quarantine.strike(names, reason, quarantine_strikes)

    async def pause(self, name: str) -> str:
        return await self._admin.pause(name)

    async def resume(self, name: str) -> str:
        return await self._admin.resume(name)

    async def trigger(self, name: str, now: datetime) -> TriggerResult:
        return await self._admin.trigger(name, now)

    async def status(self, names: Sequence[str] | None = None) -> list[TaskState]:
        return await self._admin.status(names)

    async def history(self, name: str | None = None, limit: int = 50) -> list[RunEntry]:
        return await self._admin.history(name, limit)

    async def task_names(self) -> list[str]:
        return await self._admin.task_names()

    # -- the job queue (contracts: `JobStore`) --------------------------------------------

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
        return await self._jobs.enqueue_job(
            kind,
            args,
            run_at=run_at,
            priority=priority,
            unique_key=unique_key,
            max_retries=max_retries,
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
        return await self._jobs.acquire_jobs(
            now, limit, slots, takeover=takeover, suspects=suspects
        )

    async def renew_jobs(self, claims: Iterable[Claim]) -> set[str]:
        return await self._jobs.renew_jobs(claims)

    async def complete_job(self, claim: JobClaim) -> bool:
        return await self._jobs.complete_job(claim)

    async def complete_jobs(self, claims: Sequence[JobClaim]) -> list[bool]:
        return await self._jobs.complete_jobs(claims)

    async def fail_job(self, claim: JobClaim, error: str, retry_at: datetime | None) -> bool:
        return await self._jobs.fail_job(claim, error, retry_at)

    async def release_job(self, claim: JobClaim) -> bool:
        return await self._jobs.release_job(claim)

    async def cancel_job(self, job_id: int) -> JobState:
        return await self._jobs.cancel_job(job_id)

    async def retry_job(self, job_id: int, now: datetime) -> JobState:
        return await self._jobs.retry_job(job_id, now)

    async def job_counts(self) -> list[JobCount]:
        return await self._jobs.job_counts()

    async def job_info(self, job_id: int) -> JobInfo:
        return await self._jobs.job_info(job_id)

    async def prune_jobs(self, before: datetime, limit: int) -> int:
        return await self._jobs.prune_jobs(before, limit)


# the name the runtime and the CLI know it by
TaskStore = SqlStore

if TYPE_CHECKING:  # mypy proves the implementation keeps the contract
    from cronloop.store.interface import Store

    _conforms: type[Store] = SqlStore


@asynccontextmanager
async def short_lived_store(url: URL, timeout_s: float = 3.0) -> AsyncIterator[SqlStore]:
    """A store on a throw-away engine whose every wait is bounded by `timeout_s`, for a
    thread with an event loop of its own: the watchdog's strike while the service's
    loop (and its engine) is blocked. Closed and disposed on the way out."""
    engine = create_short_lived_engine(url, timeout_s)
    store = SqlStore(engine)
    try:
        yield store
    finally:
        await store.close()
        await engine.dispose()
