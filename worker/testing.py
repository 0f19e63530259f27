"""Helpers for testing tasks: a real TaskContext without a running worker.

Task authors (and our own tests) call a task function directly with `make_context`, on a
real database, with a fake or real clock; the deadline and stop signal behave exactly as
under the supervisor.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop.config.settings import Settings
from cronloop.definitions.context import StopReason, StopSignal, TaskContext, bind_run_logger
from cronloop.definitions.registry import TaskDefinition
from cronloop.domain.clock import Clock, SystemClock
from cronloop.store.sql.engine import session_factory


def make_context(
    engine: AsyncEngine,
    *,
    name: str = "test",
    settings: Settings | None = None,
    options: Mapping[str, Any] | None = None,
    timeout_s: float = 60.0,
    clock: Clock | None = None,
    stop: StopSignal | None = None,
) -> TaskContext:
    """A context for calling a task function directly."""
    clock = clock or SystemClock()
    run_id = str(uuid.uuid4())
    now = clock.now()
    return TaskContext(
        task_name=name,
        run_id=run_id,
        scheduled_for=now,
        deadline=now + timedelta(seconds=timeout_s),
        timeout_s=timeout_s,
        log=bind_run_logger(name, run_id),
        db=session_factory(engine),
        settings=settings or Settings(),
        options=dict(options or {}),
        _clock=clock,
        _deadline_mono=clock.monotonic() + timeout_s,
        _stop=stop or StopSignal(),
    )


def options_of(func: Any, **overrides: Any) -> dict[str, Any]:
    """A task's declared option defaults, with `overrides` applied."""
    definition: TaskDefinition = func.__cronloop_task__
    return {**definition.options, **overrides}


def stop_after_checkpoints(
    ctx: TaskContext, n: int, reason: StopReason = StopReason.SHUTDOWN
) -> None:
    """Make the n-th following `checkpoint()` call raise, to test interruption anywhere."""
    original = ctx.checkpoint
    count = [0]

    def counting() -> Any:
        count[0] += 1
        if count[0] >= n:
            ctx._stop.set(reason)
        return original()

    ctx.checkpoint = counting  # type: ignore[method-assign]
