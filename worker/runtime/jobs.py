"""The job side of the loop: acquire due jobs into free slots, run each attempt with the
task runner, record how it ended.

An attempt is a run like any other: `JobRunner` is the `Runner` (deadline, checkpoints,
cancellation, the lease it cannot keep) with the job's arguments bound to its handler
and its own record: done, a retry with backoff (`RetryRule`), `error` when the retries
are exhausted or the handler raised `PermanentJobError`, or given back (shutdown). Job
leases are renewed by a `LeaseKeeper` of their own over the job table (`renew_jobs`):
the same keeper class as for tasks. Per-kind `concurrency` caps are per worker, and so
is the one-suspect rule (a job that lost a worker before runs beside no other one).
The supervisor asks `JobSide.acquire` for runners and starts them; this module never
sleeps for the loop nor knows SQL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import structlog

from cronloop.definitions.jobs import JobSpec, PermanentJobError
from cronloop.definitions.registry import TaskSpec
from cronloop.domain.jobs import JobClaim
from cronloop.domain.outcome import Outcome
from cronloop.domain.records import Claim
from cronloop.runtime.dbhealth import DatabaseFailure
from cronloop.runtime.leases import LeaseKeeper
from cronloop.runtime.recording import RECORD_RETRY_MAX_S, Written
from cronloop.runtime.runner import Ending, RunEnd, RunEnvironment, Runner
from cronloop.store.interface import JobStore

log = structlog.get_logger("cronloop.jobs")

ERROR_MAX = 4000  # characters of an error kept in last_error
PRUNE_EVERY_S = 3600.0
PRUNE_BATCH = 1000
# While jobs keep arriving, ask for them this often rather than once per poll_interval
# (enqueue-to-start latency), until BUSY_LINGER_S after the last ask that found some:
# an idle queue costs one query per poll_interval again soon after its last job.
BUSY_POLL_S = 0.05
BUSY_LINGER_S = 1.0


class _JobLeases:
    """The job table's leases, as the lease keeper renews them."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    async def renew(self, claims: Iterable[Claim]) -> set[str]:
        return await self.store.renew_jobs(claims)


@dataclasses.dataclass(frozen=True)
class _Keywords:
    """What a handler `f(ctx, ...)` takes by keyword, for the common case checked without
    `Signature.bind` (a tenth of a no-op job's CPU): its context parameter's name, the
    names it takes (None: any, it has **kwargs), those without a default."""

    ctx: str
    names: frozenset[str] | None
    required: frozenset[str]

    def take(self, args: Mapping[str, Any]) -> bool:
        keys = args.keys()
        if self.ctx in keys or not self.required <= keys:
            return False
        return self.names is None or keys <= self.names


@functools.lru_cache(maxsize=256)
def _keywords(func: Callable[..., Any]) -> _Keywords | None:
    """None when the quick check does not apply (then `Signature.bind` decides)."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return None
    P = inspect.Parameter
    if not params or params[0].kind not in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD):
        return None
    rest = params[1:]
    if any(p.kind == P.POSITIONAL_ONLY for p in rest):
        return None
    named = [p for p in rest if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)]
    return _Keywords(
        params[0].name,
        None if any(p.kind == P.VAR_KEYWORD for p in rest) else frozenset(p.name for p in named),
        frozenset(p.name for p in named if p.default is P.empty),
    )


def _bound(spec: JobSpec, job: JobClaim) -> Callable[..., Any]:
    """The handler with the job's arguments; arguments it does not take fail the attempt
    as `PermanentJobError` (no retry can fix them), without calling it."""
    try:
        quick = _keywords(spec.func)
    except TypeError:  # an unhashable callable: no cache, bind decides
        quick = None
    if quick is not None and quick.take(job.args):
        return functools.partial(spec.func, **job.args)
    try:
        inspect.signature(spec.func).bind(None, **job.args)
    except TypeError as exc:
        problem = f"job {spec.name!r}: the handler does not take these arguments: {exc}"

        def refuse(ctx: Any) -> Any:
            raise PermanentJobError(problem)

        async def refuse_async(ctx: Any) -> Any:
            raise PermanentJobError(problem)

        return refuse if spec.blocking else refuse_async
    return functools.partial(spec.func, **job.args)


class JobRunner(Runner):
    """One attempt of one job."""

    def __init__(self, spec: JobSpec, job: JobClaim, env: RunEnvironment, side: JobSide) -> None:
        as_task = TaskSpec(
            name=spec.name,
            func=_bound(spec, job),
            schedule=None,
            timeout_s=spec.timeout_s,
            blocking=spec.blocking,
            description=spec.description,
        )
        claim = job.claim
        super().__init__(as_task, claim, env, side.leases.track(claim, env.clock.monotonic()))
        self.job = job
        self.job_spec = spec
        self.side = side
        self.permanent = False
        self.log = self.log.bind(job_id=job.job_id, attempt=job.attempts)

    async def run(self) -> RunEnd:
        """The attempt, recorded; its slot is free when this returns. A handler that could
        not be stopped is not kept as a straggler (its lease was freed by the record):
        it is logged, and may overlap a retry of the same job."""
        try:
            end = await super().run()
        finally:
            self.side.ended(self)
        if end.straggler is not None:
            self.log.error("job attempt left behind: its handler still runs", job=self.job.kind)
            end = dataclasses.replace(end, straggler=None)
        return end

    def _ending_of(self, inner: asyncio.Future[Any]) -> Ending:
        if not inner.cancelled() and isinstance(inner.exception(), PermanentJobError):
            self.permanent = True
        return super()._ending_of(inner)

    async def _record(
        self, started: Any, ending: Ending
    ) -> tuple[Outcome, datetime | None, Written]:
        store, job, outcome = self.side.store, self.job, ending.outcome
        retry_at: datetime | None = None
        if outcome == Outcome.SUCCESS:
            op: Any = functools.partial(self.side.complete, job)  # grouped with others
        elif outcome in (Outcome.INTERRUPTED, Outcome.ABANDONED):
            op = functools.partial(store.release_job, job)  # fenced: a lost lease writes nothing
        else:
            delay_s = (
                None
                if self.permanent
                else self.job_spec.retry.delay_after(job.attempts, job.max_retries)
            )
            if delay_s is not None:
                retry_at = self.env.clock.now() + timedelta(seconds=delay_s)
            error = (ending.error or outcome.value)[:ERROR_MAX]
            op = functools.partial(store.fail_job, job, error, retry_at)
        self.lease.recording(True)
        written = await self._write(op, grouped=outcome == Outcome.SUCCESS)
        level = "info" if outcome in (Outcome.SUCCESS, Outcome.INTERRUPTED) else "warning"
        getattr(self.log, level)(
            "job finished",
            job=job.kind,
            outcome=outcome.value,
            duration_ms=round((self.env.clock.monotonic() - self.started_mono) * 1000, 1),
            message=ending.message,
            error=ending.error,
            retry_at=retry_at.isoformat() if retry_at else None,
            permanent=self.permanent or None,
            recorded=written.landed or None,
        )
        return outcome, None, written

    async def _write(self, op: Any, grouped: bool) -> Written:
        """The fenced write, retried through outages until it lands, is refused, or the
        run gives up (shutdown past its grace): then the lease expires and the attempt
        is taken over (at least once)."""
        while True:
            try:
                if grouped:
                    landed = await op()  # the group commit calls the policy itself
                else:
                    landed = await self.env.health.call(op, what="recording a job")
                return Written.WRITTEN if landed else Written.LEASE_LOST
            except DatabaseFailure as failure:
                if failure.refused:
                    return Written.REFUSED
                if self._abort.done():
                    return Written.GAVE_UP
                await self.env.clock.sleep(RECORD_RETRY_MAX_S)


class JobSide:
    """What the supervisor asks about jobs: runners for free slots, and when to ask."""

    def __init__(
        self,
        jobs: Mapping[str, JobSpec],
        store: JobStore,
        env: RunEnvironment,
        on_free: Callable[[], None] = lambda: None,
    ) -> None:
        self.specs = dict(jobs)
        self.on_free = on_free
        self.store = store
        self.env = env
        self.leases = LeaseKeeper(_JobLeases(store), env.clock, env.settings.lease_s, env.health)
        self.running: dict[str, int] = {}  # kind -> attempts running here
        self.suspects = 0  # attempts running here of jobs that lost a worker before
        # successful attempts waiting for the next group commit (see `complete`)
        self._pending: list[tuple[JobClaim, asyncio.Future[bool]]] = []
        self._flush_task: asyncio.Future[None] | None = None
        self._next_mono = 0.0  # when to ask the table again
        self._busy_until = float("-inf")  # asking every BUSY_POLL_S until then

    def __bool__(self) -> bool:
        return bool(self.specs)

    def sleep_cap_s(self, free_slots: int) -> float | None:
        """How long the loop may sleep before jobs must be asked for again (None: no
        limit, as when no slot is free: an attempt that ends wakes the loop)."""
        if not self.specs or free_slots <= 0:
            return None
        return max(0.0, self._next_mono - self.env.clock.monotonic())

    def wake(self) -> None:
        """Ask at the next tick (an attempt ended: a slot is free, more may wait)."""
        self._next_mono = 0.0

    def use(self, specs: Mapping[str, JobSpec]) -> None:
        """The job kinds after a reload."""
        self.specs = dict(specs)

    async def acquire(self, capacity: int) -> list[JobRunner]:
        """Runners for up to `capacity` due jobs of the kinds with free slots (none when
        it is not yet time to ask again)."""
        mono = self.env.clock.monotonic()
        if not self.specs or capacity <= 0 or mono < self._next_mono:
            return []
        slots = {
            name: None if spec.concurrency is None else spec.concurrency - self.running.get(name, 0)
            for name, spec in self.specs.items()
        }
        # A job that lost a worker before (a suspect) runs beside no other suspect
        # here: when a poison job kills this worker again, the jobs it takes down
        # with it are fresh ones, never the bystanders of its last crash.
        # Just after an outage, an expired lease's owner may be recording that attempt.
        takeover = self.env.health.settled(self.env.settings.lease_s / 3)
        try:
            claims = await self.env.health.call(
                lambda: self.store.acquire_jobs(
                    self.env.clock.now(),
                    capacity,
                    slots,
                    takeover=takeover,
                    suspects=0 if self.suspects else 1,
                ),
                what="acquiring jobs",
            )
        except DatabaseFailure:
            claims = []
        if claims:
            self._busy_until = mono + BUSY_LINGER_S
        # a full batch: ask again at once; else at the next poll
        self._next_mono = mono if len(claims) >= capacity else mono + self._poll_s(mono)
        runners = []
        for job in claims:
            self.running[job.kind] = self.running.get(job.kind, 0) + 1
            self.suspects += job.suspect
            runners.append(JobRunner(self.specs[job.kind], job, self.env, self))
        return runners

    def _poll_s(self, mono: float) -> float:
        """The wait before the next ask: short while jobs have kept coming."""
        poll = self.env.settings.poll_interval
        return min(poll, BUSY_POLL_S) if mono < self._busy_until else poll

    async def housekeeping(self) -> None:
        """The side loop that deletes done and cancelled jobs older than
        `job_retention_days` (0: kept), in batches, once every `PRUNE_EVERY_S`."""
        while True:
            days = self.env.settings.job_retention_days
            if self.specs and days > 0:
                await self.prune(self.env.clock.now() - timedelta(days=days))
            await self.env.clock.sleep(PRUNE_EVERY_S)

    async def prune(self, before: datetime) -> int:
        """Delete done and cancelled jobs finished before `before`, batch by batch."""
        total = 0
        prune = functools.partial(self.store.prune_jobs, before, PRUNE_BATCH)
        while True:
            try:
                pruned = await self.env.health.call(prune, what="pruning jobs")
            except DatabaseFailure:
                break
            total += pruned
            if pruned < PRUNE_BATCH:
                break
        if total:
            log.info("old jobs deleted", jobs=total, before=before.isoformat())
        return total

    async def complete(self, job: JobClaim) -> bool:
        """Record a successful attempt, together with every other one that ends in the
        same turn of the loop or while a write is in flight: one transaction for all.
        Raises `DatabaseFailure` as the policy does (the caller retries; fenced)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        if self._flush_task is None or self._flush_task.done():
            self._flush_task = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the attempts ending in this turn join
        while self._pending:
            batch, self._pending = self._pending, []
            claims = [job for job, _ in batch]
            try:
                landed = await self.env.health.call(
                    functools.partial(self.store.complete_jobs, claims), what="recording jobs"
                )
            except DatabaseFailure as failure:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
                continue
            for (_, future), ok in zip(batch, landed, strict=True):
                if not future.done():
                    future.set_result(ok)

    def ended(self, runner: JobRunner) -> None:
        """An attempt ended (its record written or given up)."""
        left = self.running.get(runner.job.kind, 1) - 1
        if left > 0:
            self.running[runner.job.kind] = left
        else:
            self.running.pop(runner.job.kind, None)
        self.suspects -= runner.job.suspect
        self.leases.forget(runner.claim)
        self.wake()
        self.on_free()
