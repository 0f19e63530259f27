"""The store, as the runtime and the CLI see it: one Protocol in domain verbs.

Every implementation (`cronloop.store.sql.store.SqlStore` for SQLite and MySQL/MariaDB,
`cronloop.store.memory.MemoryStore` for fast tests) passes one contract suite
(`tests/store/test_store_contract.py`). This module owns the contract, never how it is
kept: no SQL, no asyncio tasks, no deadlines.

The rules every verb keeps:

- **Leases use the database's clock** (`database_now`), never a worker's: two hosts whose
  clocks disagree still agree on who owns a run. Due-ness (`next_run <= now`) uses the
  `now` the caller passes (the worker's `Clock`).
- **Fencing**: a claim carries a lease token; every write about a run (`renew`,
  `complete`, `release`, `free_lease`) is conditional on (task id, token). A worker that
  lost its lease writes nothing, and learns it from the return value.
- **Atomic verbs**: each verb is one transaction; none holds a lock when it returns.
  `complete_many` may split its batch but each run is all-or-nothing.
- **History follows the table**: a claim inserts the run's history row (`running`);
  taking over an expired lease marks the old run `abandoned`; `complete` ends the row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

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

# a run that ended: its claim, how it ended, and whether its lease must be kept
Ended = tuple[Claim, RunRecord, bool]

# the status reasons and history errors every implementation writes
ABANDONED_ERROR = "the worker running it was lost (crash or lease expired)"
DISABLED_BY_CONFIG = "disabled by configuration (enabled = 0)"


def timeout_quarantine_reason(limit: int) -> str:
    """Why a task was quarantined after `limit` timeouts in a row (as status shows it)."""
    return (
        f"timed out {limit} times in a row; fix the task or raise its timeout, then "
        "`cronloop resume` it"
    )


def strike_quarantine_reason(reason: str, strikes: int, name: str) -> str:
    """Why a task was quarantined after `strikes` strikes ("blocked the loop for 31 s")."""
    return f"{reason}, {strikes} strikes; `cronloop resume {name}` to run it again"


def strikes_quarantine(row: Any, quarantine_strikes: int) -> bool:
    """Taking this row's expired lease over would be its `quarantine_strikes`-th strike
    (0: never): the row is quarantined instead of run again. The one rule for queued
    rows, kept by every store."""
    return quarantine_strikes > 0 and int(row.strikes) + 1 >= quarantine_strikes


def takeover_quarantine_reason(strikes: int, retry_hint: str = "`cronloop retry ID`") -> str:
    """Why a queued row (a job, an email) was quarantined: its attempts lost their
    worker `strikes` times (the task rule's strikes, counted at each takeover)."""
    return (
        f"quarantined: its worker was lost (crash, kill -9, watchdog exit) during {strikes} "
        f"attempts, {strikes} strikes; fix the cause, then {retry_hint} to run it again"
    )


@runtime_checkable
class JobStore(Protocol):
    """The verbs of the job queue (`cronloop_job`), kept by the same stores as `Store`.

    The same rules: leases on the database clock, fenced by (job id, token) through the
    one lease mechanism (`renew_jobs` is `renew` over the job table), one transaction per
    verb. Due-ness (`run_at <= now`) uses the caller's `now`. A job is delivered at least
    once: an attempt whose worker was lost is taken over once its lease expires.
    """

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
        """Queue a job, committed; its id. With `unique_key`, while a job of that kind and
        key is planned or running, that job's id is returned and nothing is added."""
        ...

    async def acquire_jobs(
        self,
        now: datetime,
        limit: int,
        slots: Mapping[str, int | None],
        *,
        takeover: bool = True,
        suspects: int | None = None,
    ) -> list[JobClaim]:
        """Lease up to `limit` jobs of the kinds in `slots` (kind -> free slots, None: no
        cap) that are planned and due at `now`, or running with an expired lease (taken
        over: `took_over`; not if `takeover=False`, as `claim_next`'s just after an
        outage), highest priority first, then earliest `run_at`. Each attempt counts in
        `attempts`. Two workers never get the same attempt. A takeover is a strike
        against the job (its worker was lost); the one that would be its
        `quarantine_strikes`-th quarantines it instead (state `quarantined`, the reason
        in `last_error`), as a task that keeps blocking the loop is. At most `suspects`
        (None: any number) of the jobs leased are suspects (`JobClaim.suspect`: being
        taken over, or struck before)."""
        ...

    async def renew_jobs(self, claims: Iterable[Claim]) -> set[str]:
        """`renew` for jobs (`JobClaim.claim`): the run ids whose lease was lost."""
        ...

    async def complete_job(self, claim: JobClaim) -> bool:
        """The attempt succeeded: `done`, lease freed. False if the lease was lost."""
        ...

    async def complete_jobs(self, claims: Sequence[JobClaim]) -> list[bool]:
        """`complete_job` for many attempts in one transaction, one bool per claim in
        order; a lost lease fails only its own attempt."""
        ...

    async def fail_job(self, claim: JobClaim, error: str, retry_at: datetime | None) -> bool:
        """The attempt failed: planned again at `retry_at`, or `error` for good when None;
        the error kept in `last_error`. Fenced like `complete_job`."""
        ...

    async def release_job(self, claim: JobClaim) -> bool:
        """Give the attempt back unrun or interrupted: planned, due at once, the attempt
        not counted. Fenced."""
        ...

    async def cancel_job(self, job_id: int) -> JobState:
        """Cancel a planned job; the state it had (only `planned` changes). Raises
        `UnknownJob`."""
        ...

    async def retry_job(self, job_id: int, now: datetime) -> JobState:
        """Plan a job in `error`, `cancelled` or `quarantined` again, attempts and strikes
        reset, due at `now`; the
        state it had (others do not change). ValueError if its unique key is held by
        another waiting job. Raises `UnknownJob`."""
        ...

    async def job_counts(self) -> list[JobCount]:
        """Jobs by kind and state, with the oldest `run_at` of each group."""
        ...

    async def job_info(self, job_id: int) -> JobInfo:
        """One job row. Raises `UnknownJob`."""
        ...

    async def prune_jobs(self, before: datetime, limit: int) -> int:
        """Delete up to `limit` done or cancelled jobs that finished before `before`
        (jobs in error stay for the operator); how many were deleted."""
        ...


@runtime_checkable
class Store(JobStore, Protocol):
    """The verbs of cronloop's task table and run history, and the job queue's
    (`JobStore`)."""

    @property
    def worker_id(self) -> str:
        """Who this store claims for (`host:pid:random`): the `owner` of its leases."""
        ...

    # -- the task set ---------------------------------------------------------------

    async def sync_tasks(self, declared: Iterable[TaskDeclaration]) -> SyncReport:
        """Make the table match the tasks this worker knows: add new ones, mark vanished
        ones `removed`, reactivate returning ones, replan a changed schedule; an
        operator's `paused` or `quarantined` is kept. Safe against a concurrent worker
        syncing the same rows."""
        ...

    # -- claims and leases ----------------------------------------------------------

    async def claim_next(
        self,
        now: datetime,
        limit: int,
        names: Sequence[str] | None = None,
        *,
        takeover: bool = True,
    ) -> ClaimBatch:
        """Lease up to `limit` active runs due at `now` (earliest first) whose lease is
        free, or expired if `takeover`; say when the next free run is due.

        Each claim gets a lease of `lease_s` on the database clock and a fresh token, and
        its history row is inserted as `running`; a claim that takes over an expired
        lease names the old run (`took_over`) and marks it `abandoned`. Two workers never
        get the same run. `names` restricts the claim to tasks this worker knows.
        `takeover=False` is for just after an outage: an expired lease's owner may be
        writing that run's end right now."""
        ...

    async def claim_due(
        self,
        now: datetime,
        limit: int,
        names: Sequence[str] | None = None,
        *,
        takeover: bool = True,
    ) -> list[Claim]:
        """`claim_next(...).claims`."""
        ...

    async def renew(self, claims: Iterable[Claim]) -> set[str]:
        """Extend the leases still held by `lease_s` from the database clock; return the
        run ids whose lease was lost (nothing is written for those)."""
        ...

    async def release(self, claim: Claim) -> bool:
        """Give a claim back unrun: free its lease (fenced), history row `skipped`.
        False if the lease was no longer held."""
        ...

    async def free_lease(self, claim: Claim) -> bool:
        """Free a lease kept by `complete(keep_lease=True)`, fenced by its token."""
        ...

    async def reap_abandoned(self) -> int:
        """Mark `abandoned` the `running` history rows whose lease expired (the worker
        vanished), also for tasks nobody claims again; how many rows changed."""
        ...

    async def next_due(self, names: Sequence[str] | None = None) -> datetime | None:
        """The earliest `next_run` among active tasks that are free to claim (a running
        task's past slot does not count); None if there is none. The idle loop's only
        call, so implementations make it cheap."""
        ...

    # -- recording ------------------------------------------------------------------

    async def complete(self, claim: Claim, record: RunRecord, *, keep_lease: bool = False) -> bool:
        """Write a run's end: statistics, next run, outcome, history row; free the lease
        unless `keep_lease` (a thread that cannot be stopped still runs: `free_lease`
        later). All of it or nothing: False if the lease was lost. The task's
        `quarantine_timeouts`-th timeout in a row quarantines it (if still active)."""
        ...

    async def complete_many(self, ended: Sequence[Ended]) -> list[bool]:
        """`complete` for many runs at once, one bool per run in order; a lost lease
        fails only its own run."""
        ...

    async def strike(self, names: Sequence[str], reason: str, quarantine_strikes: int) -> list[str]:
        """Add a strike to each named task (it blocked the event loop); quarantine the
        active ones that reached `quarantine_strikes`, saying `reason` and how many
        strikes. Returns the names quarantined now. Not fenced: no run is being
        recorded, and an operator's pause is left alone."""
        ...

    # -- operator verbs and reading -------------------------------------------------

    async def pause(self, name: str) -> str:
        """Stop scheduling a task (a run in progress finishes); the old status.
        Raises `UnknownTask`."""
        ...

    async def resume(self, name: str) -> str:
        """Make a paused or quarantined task active, strikes and timeouts reset; a
        removed or disabled one stays so (configuration decides). The old status."""
        ...

    async def trigger(self, name: str, now: datetime) -> TriggerResult:
        """Run an active task as soon as possible without moving its planned slot."""
        ...

    async def status(self, names: Sequence[str] | None = None) -> list[TaskState]:
        """The task rows by name; `running` means a lease not yet expired."""
        ...

    async def history(self, name: str | None = None, limit: int = 50) -> list[RunEntry]:
        """The latest history rows, newest first."""
        ...

    async def task_names(self) -> list[str]:
        """Every task in the table, sorted."""
        ...

    async def database_now(self) -> datetime:
        """The clock leases are measured on (aware UTC)."""
        ...

    async def close(self) -> None:
        """Let go of what the store keeps open (not the engine: its owner disposes it)."""
        ...

    def classify_error(self, exc: BaseException) -> ErrorKind:
        """What kind of failure `exc`, raised by one of these verbs, is: the drivers'
        codes are the store's to know, what to do about each kind the caller's."""
        ...
