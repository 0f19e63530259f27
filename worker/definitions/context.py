"""What a running task sees: its deadline, its stop signal, its logger and database.

A task cooperates by calling `await ctx.checkpoint()` between units of work. Once the
deadline has passed, the worker is shutting down, or the lease was lost, the checkpoint
raises `StopRun`, which derives from `BaseException` so that a task's broad
`except Exception:` cannot swallow it by accident.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

if TYPE_CHECKING:
    from cronloop.config.settings import Settings
    from cronloop.domain.clock import Clock


class StopReason(StrEnum):
    """Why a run was asked to stop; decides the recorded outcome."""

    DEADLINE = "deadline"  # -> timed_out
    SHUTDOWN = "shutdown"  # -> interrupted (runs again after the restart)
    LEASE_LOST = "lease_lost"  # -> abandoned (another worker may own it now)


class StopRun(BaseException):
    """Raised by `checkpoint()` to end a run early; not an `Exception` on purpose."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(f"run stopped: {reason.value}")
        self.reason = reason


@dataclass
class StopSignal:
    """A stop request that both coroutines and worker threads can read.

    Plain attributes rather than an asyncio.Event because `blocking=True` tasks check it
    from a thread, where touching asyncio objects is unsafe; nobody waits on it, so a
    threading.Event (a lock and a condition per run) would only cost.
    """

    reason: StopReason | None = None
    # the monotonic time after which this worker can no longer prove it owns the run's
    # lease, asked of the lease keeper (its one owner); a checkpoint past it stops the run
    # as LEASE_LOST, even if the loop or the database kept the lease keeper from noticing
    # (SIGSTOP, hung renewal), so a run never goes on once another worker may own it
    lease_valid_until: Callable[[], float] = lambda: math.inf

    def set(self, reason: StopReason) -> None:
        """Record the first reason only: a deadline that passes during a shutdown stays a
        shutdown, so the run is not counted as a failure."""
        if self.reason is None:
            self.reason = reason

    def is_set(self) -> bool:
        return self.reason is not None


@dataclass
class TaskContext:
    """Everything one run may use. Built by the runner; tasks never construct it."""

    task_name: str
    run_id: str
    scheduled_for: datetime
    deadline: datetime
    timeout_s: float
    log: Any  # a structlog BoundLogger bound to task and run_id
    db: async_sessionmaker[AsyncSession]
    settings: Settings
    options: Mapping[str, Any] = field(repr=False)  # may hold secrets (smtp_password)
    _clock: Clock
    _deadline_mono: float
    _stop: StopSignal

    @property
    def should_stop(self) -> bool:
        """True once the task ought to wind up: deadline passed, shutdown, or lease lost.

        Reading it also trips the deadline, so a loop that only polls `should_stop`
        (typical in blocking tasks) still stops at its deadline.
        """
        self._check_deadline()
        return self._stop.is_set()

    @property
    def stop_reason(self) -> StopReason | None:
        return self._stop.reason

    def time_left(self) -> float:
        """Seconds until the deadline (negative once past)."""
        return self._deadline_mono - self._clock.monotonic()

    def checkpoint(self) -> _Checkpoint:
        """Raise `StopRun` if this run must stop; awaited, also yield to the loop.

        The check happens at the call, so the same `ctx.checkpoint()` works unawaited in a
        `blocking=True` task's thread; awaiting it yields once and checks again, so an
        async task that never awaits anything else still lets other tasks run.
        """
        self._raise_if_stopping()
        return _Checkpoint(self)

    def _raise_if_stopping(self) -> None:
        if self.should_stop:
            assert self._stop.reason is not None
            raise StopRun(self._stop.reason)

    def _check_deadline(self) -> None:
        if self._stop.is_set():
            return
        if self._clock.monotonic() >= self._stop.lease_valid_until():
            self._stop.set(StopReason.LEASE_LOST)
        elif self.time_left() <= 0:
            self._stop.set(StopReason.DEADLINE)


class _Checkpoint:
    """The awaitable half of `checkpoint()`; a plain object, so leaving it unawaited in a
    thread is harmless (a coroutine would warn "never awaited")."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: TaskContext) -> None:
        self._ctx = ctx

    def __await__(self) -> Generator[Any, None, None]:
        yield from asyncio.sleep(0).__await__()
        self._ctx._raise_if_stopping()


def bind_run_logger(task_name: str, run_id: str) -> Any:
    """A logger that carries the task and run on every line, for journald fields."""
    return structlog.get_logger("cronloop.task").bind(task=task_name, run_id=run_id)
