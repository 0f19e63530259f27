"""One run of one task: its deadline, its stop signal, its outcome, its record.

The deadline has two steps. At `timeout_s` the stop signal is set, so `checkpoint()` raises
and `should_stop` turns true: a cooperative task winds up cleanly. After `grace_s` more,
the coroutine is cancelled. A task that swallows the cancellation too is left behind
(recorded `timed_out`, with a note) so it cannot hold up anything else. Whatever happens,
the outcome is written, shielded from the runner's own cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from cronloop.config.settings import Settings
from cronloop.definitions.context import (
    StopReason,
    StopRun,
    StopSignal,
    TaskContext,
    bind_run_logger,
)
from cronloop.definitions.registry import TaskSpec
from cronloop.domain.clock import Clock
from cronloop.domain.freetext import exception_text, text_of, traceback_text
from cronloop.domain.outcome import Outcome
from cronloop.domain.planning import RetryPolicy, plan_next
from cronloop.domain.records import Claim, RunRecord
from cronloop.runtime.dbhealth import DbHealth
from cronloop.runtime.events import NoEvents, RunEvents
from cronloop.runtime.leases import Lease
from cronloop.runtime.recording import Recorder, Written
from cronloop.store.interface import Store

log = structlog.get_logger("cronloop.runner")

_REASON_OUTCOME = {
    StopReason.DEADLINE: Outcome.TIMED_OUT,
    StopReason.SHUTDOWN: Outcome.INTERRUPTED,
    StopReason.LEASE_LOST: Outcome.ABANDONED,
}
CANCEL_WAIT_S = 2.0  # how long a cancelled task may take to unwind before it is left behind


def db_timeout_s(lease_s: float) -> float:
    """The longest the service waits for one of its own database calls. A partitioned
    network (no reset, no answer) would otherwise hang a call forever: the driver has no
    read timeout. A third of the lease, so a renewal can fail and be retried in time."""
    return max(2.0, lease_s / 3)


class RunEnvironment:
    """What every run shares; passed as one object instead of a long argument list.

    It follows the settings in force: `apply` (a SIGHUP reload) swaps them, and with them
    the retry policy and the size of the thread pool `blocking=True` tasks run in."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        clock: Clock,
        db: Any,  # async_sessionmaker for ctx.db
        executor: Executor | None = None,  # a fixed pool (tests); else one sized to settings
        record_window_s: float = 0.0,  # the service's: RECORD_WINDOW_S
    ) -> None:
        self.store = store
        self.clock = clock
        self.db = db
        self._settings = settings
        self._fixed_executor = executor
        self._pools: list[ThreadPoolExecutor] = []  # the last one is in use
        self._pool_size = 0
        # the one owner of database-error policy, for every call the runtime makes
        self.health = DbHealth(
            clock, lambda: db_timeout_s(self._settings.lease_s), store.classify_error
        )
        # writes how runs ended, many per transaction
        self.recorder = Recorder(
            store,
            self.health,
            window_s=record_window_s,
            eager_at=lambda: max(1, self._settings.max_concurrency // 2),
        )
        # who hears of each run's start and end (the metrics, when the web server is on)
        self.events: RunEvents = NoEvents()

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy(self._settings.retry_max, self._settings.retry_delay_s)

    @property
    def executor(self) -> Executor:
        """The bounded pool new `blocking=True` runs are submitted to: `max_concurrency`
        threads, as many as runs may be in flight."""
        if self._fixed_executor is not None:
            return self._fixed_executor
        size = self._settings.max_concurrency
        if not self._pools or self._pool_size != size:
            if self._pools:  # resized: the old pool ends once its running tasks end
                self._pools[-1].shutdown(wait=False)
            self._pools.append(ThreadPoolExecutor(size, thread_name_prefix="cronloop-task"))
            self._pool_size = size
        return self._pools[-1]

    def apply(self, settings: Settings) -> None:
        """Use `settings` for every run started from now on (a reload)."""
        self._settings = settings

    def close(self) -> None:
        """Stop the pools without waiting: a stuck thread must not hold up the exit."""
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class RunEnd:
    """What a run reports when it ends, to whoever started it."""

    outcome: Outcome
    next_run: datetime | None  # when its task runs next, once recorded; None if unknown
    written: Written
    # set when the task could not be stopped: what ends when it really ends
    straggler: asyncio.Future[Any] | None = None


@dataclass
class Ending:
    outcome: Outcome
    message: str | None = None
    error: str | None = None
    # the task could not be stopped (it ignored cancellation, or its thread runs on)
    left_behind: bool = False


class Runner:
    """Runs `spec` for `claim`; `stop()` and `abort()` are how the supervisor steers it."""

    def __init__(
        self, spec: TaskSpec, claim: Claim, env: RunEnvironment, lease: Lease | None = None
    ) -> None:
        self.spec = spec
        self.claim = claim
        self.env = env
        # the lease keeper's view of this run's lease; untracked (valid for ever) in tests
        self.lease = lease or Lease(claim, math.inf, 0.0)
        self.signal = StopSignal(lease_valid_until=self.lease.valid_until)
        # done once the run must be cancelled now; a plain future, not an Event, so that
        # waiting on it costs no extra task per run
        self._abort: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.started_mono = env.clock.monotonic()
        self.log = bind_run_logger(spec.name, claim.run_id)
        self.lease.attach(self.abort, self.log)
        self._thread: Future[Any] | None = None  # a blocking task's thread
        self._stepped = False  # the task had its first step before any timer was set

    @property
    def name(self) -> str:
        return self.spec.name

    def stop(self, reason: StopReason) -> None:
        """Ask the task to stop at its next checkpoint."""
        self.signal.set(reason)

    def abort(self, reason: StopReason) -> None:
        """Cancel the task now (shutdown past its grace, or a lost lease)."""
        self.signal.set(reason)
        if not self._abort.done():
            self._abort.set_result(None)

    async def run(self) -> RunEnd:
        """Run the task to its end and record it; never raises for the task's faults.

        A failure to record that is a bug (not an outage, nor a refused row) is raised:
        the supervisor stops the worker loudly for it."""
        started = self.env.clock.now()
        ctx = self._context(started)
        self.log.debug(
            "run started",
            scheduled_for=self.claim.scheduled_for.isoformat(),
            triggered=self.claim.triggered,
            took_over=self.claim.took_over,
        )
        lateness_s = (started - self.claim.scheduled_for).total_seconds()
        self.env.events.run_started(self.spec.name, max(0.0, lateness_s))
        inner = asyncio.ensure_future(self._invoke(ctx))
        ending = await self._drive(inner)
        straggler = self._still_running(inner) if ending.left_behind else None
        outcome, next_run, written = await asyncio.shield(self._record(started, ending))
        return RunEnd(outcome, next_run, written, straggler)

    def _still_running(self, inner: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """What ends when the task has really stopped: its thread, or its coroutine."""
        if self._thread is not None:
            return asyncio.wrap_future(self._thread)
        return inner

    def _context(self, started: Any) -> TaskContext:
        timeout_s = self.spec.timeout_s
        return TaskContext(
            task_name=self.spec.name,
            run_id=self.claim.run_id,
            scheduled_for=self.claim.scheduled_for,
            deadline=started + timedelta(seconds=timeout_s),
            timeout_s=timeout_s,
            log=self.log,
            db=self.env.db,
            settings=self.env.settings,
            options=self.spec.options,
            _clock=self.env.clock,
            _deadline_mono=self.started_mono + timeout_s,
            _stop=self.signal,
        )

    async def _drive(self, inner: asyncio.Future[Any]) -> Ending:
        soft_s = self.spec.timeout_s
        hard_s = soft_s + self.env.settings.grace_s
        while not inner.done():
            elapsed = self.env.clock.monotonic() - self.started_mono
            wait_for = (soft_s if elapsed < soft_s else hard_s) - elapsed
            if self._abort.done() or wait_for <= 0:
                if not self._abort.done():
                    self.signal.set(StopReason.DEADLINE)
                return await self._cancel(inner)
            await self._wait_any(inner, wait_for)
            if self.env.clock.monotonic() - self.started_mono >= soft_s:
                self.signal.set(StopReason.DEADLINE)
        return self._ending_of(inner)

    async def _wait_any(self, inner: asyncio.Future[Any], seconds: float) -> None:
        """Until the task ends, `seconds` pass, or an abort. Most runs of short tasks end
        within their first step: those are seen after one turn of the loop, before any
        timer is set."""
        if not self._stepped:
            self._stepped = True
            await asyncio.sleep(0)
            if inner.done():
                return
        sleeper = asyncio.ensure_future(self.env.clock.sleep(seconds))
        try:
            await asyncio.wait({inner, sleeper, self._abort}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()

    async def _cancel(self, inner: asyncio.Future[Any]) -> Ending:
        inner.cancel()
        done, _ = await asyncio.wait({inner}, timeout=CANCEL_WAIT_S)
        reason = self.signal.reason or StopReason.DEADLINE
        outcome = _REASON_OUTCOME[reason]
        thread_runs = self._thread is not None and not self._thread.done()
        if not done or thread_runs:
            inner.add_done_callback(_quietly)
            what = "its thread could not be stopped" if thread_runs else "it ignored cancellation"
            return Ending(outcome, error=f"{reason.value}: {what}; left behind", left_behind=True)
        if inner.cancelled() or isinstance(inner.exception(), StopRun | asyncio.CancelledError):
            return Ending(
                outcome,
                error=f"{reason.value}: cancelled after {self.env.settings.grace_s}s of grace"
                if reason == StopReason.DEADLINE
                else reason.value,
            )
        return self._ending_of(inner)

    async def _invoke(self, ctx: TaskContext) -> Any:
        structlog.contextvars.bind_contextvars(task=self.spec.name, run_id=self.claim.run_id)
        if self.spec.blocking:
            # submit, not run_in_executor: the concurrent future tells whether the thread
            # still runs after its asyncio side was cancelled
            self._thread = self.env.executor.submit(self.spec.func, ctx)
            return await asyncio.wrap_future(self._thread)
        return await self.spec.func(ctx)

    def _ending_of(self, inner: asyncio.Future[Any]) -> Ending:
        if inner.cancelled():
            return Ending(_REASON_OUTCOME[self.signal.reason or StopReason.SHUTDOWN])
        exc = inner.exception()
        if exc is None:
            result = inner.result()
            return Ending(Outcome.SUCCESS, message=None if result is None else text_of(result))
        if isinstance(exc, StopRun):
            return Ending(
                _REASON_OUTCOME[exc.reason], error=f"stopped at a checkpoint: {exc.reason.value}"
            )
        if isinstance(exc, asyncio.CancelledError):
            return Ending(_REASON_OUTCOME[self.signal.reason or StopReason.SHUTDOWN])
        text = traceback_text(exc)
        self.log.error("task raised", exc_type=type(exc).__name__, exception=text)
        return Ending(Outcome.FAILED, error=exception_text(exc))

    async def _record(
        self, started: Any, ending: Ending
    ) -> tuple[Outcome, datetime | None, Written]:
        ended = self.env.clock.now()
        duration_s = self.env.clock.monotonic() - self.started_mono
        outcome = ending.outcome
        plan = (
            plan_next(self.spec.schedule, self.claim, outcome, ended, self.env.retry)
            if self.spec.schedule is not None
            else None
        )
        record = RunRecord(
            outcome=outcome,
            started=started,
            ended=ended,
            duration_s=round(duration_s, 6),
            next_run=plan.next_run if plan else None,
            planned_run=plan.planned_run if plan else None,
            message=ending.message,
            error=ending.error,
            missed=plan.missed if plan else 0,
        )
        self.lease.recording(True)
        written = await self.env.recorder.complete(
            self.claim,
            record,
            keep_lease=ending.left_behind,
            give_up=self._abort.done,
            run_log=self.log,
        )
        if ending.left_behind:
            self.lease.recording(False)  # a kept lease is renewed (and checked) again
        self.env.events.run_ended(self.spec.name, outcome, duration_s)
        level = "info" if outcome in (Outcome.SUCCESS, Outcome.INTERRUPTED) else "warning"
        getattr(self.log, level)(
            "run finished",
            outcome=outcome.value,
            duration_ms=round(duration_s * 1000, 1),
            next_run=record.next_run.isoformat() if record.next_run else None,
            message=ending.message,
            error=ending.error,
            missed=record.missed or None,
            recorded=written.landed or None,
            record=None if written is Written.WRITTEN else written.value,
        )
        return outcome, record.next_run if written.landed else None, written


def _quietly(fut: asyncio.Future[Any]) -> None:
    """Consume a left-behind task's result so asyncio does not warn about it."""
    with contextlib.suppress(BaseException):
        fut.exception()
