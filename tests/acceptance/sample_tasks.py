"""Task module for the acceptance tests, loaded with `--task_modules=sample_tasks`.

Each task exercises one behaviour of the real service (a deadline, a drain, a failure, a
shared slot). Each test chooses the tasks it needs with the environment variable
`SAMPLE_TASKS` (comma-separated names; unset or empty means all), so that, say,
`run --once` is not held up by a task that only ends when the worker is stopped. Only
the public API is used (`from cronloop import task, TaskContext`), as an extension would.

The tasks log a line when they reach a point a test waits for (`long started`), so tests
read the worker's log instead of sleeping.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from cronloop import TaskContext, task

_SELECTED = frozenset(
    name.strip() for name in os.environ.get("SAMPLE_TASKS", "").split(",") if name.strip()
)


def sample(**schedule: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`@task(**schedule)`, but only for the tasks this test selected in SAMPLE_TASKS."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if _SELECTED and fn.__name__ not in _SELECTED:
            return fn
        decorated: Callable[..., Any] = task(**schedule)(fn)
        return decorated

    return decorate


@sample(every=3600, timeout=10)
async def quick(ctx: TaskContext) -> str:
    """Succeeds at once."""
    await ctx.checkpoint()
    return "quick done"


@sample(every=3600, timeout=10, blocking=True)
def threaded(ctx: TaskContext) -> str:
    """A blocking task, run in a worker thread."""
    ctx.checkpoint()
    return "threaded done"


@sample(every=3600, timeout=10)
async def boom(ctx: TaskContext) -> None:
    """Raises: the run is `failed`, the worker carries on."""
    await ctx.checkpoint()
    raise RuntimeError("kaboom from the sample task")


@sample(at="03:00", timeout=10)
async def nightly(ctx: TaskContext) -> str:
    """Weekly-style task (not due during a test) whose time ops may override."""
    return "nightly done"


@sample(every=3600, timeout=60)
async def long(ctx: TaskContext) -> None:
    """Works until told to stop, then says what it saw and stops at a checkpoint."""
    ctx.log.info("long started")
    # should_stop is a flag that threads read too, not an asyncio.Event: polling is its use
    while not ctx.should_stop:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    ctx.log.info("long saw stop", reason=str(ctx.stop_reason))
    await ctx.checkpoint()  # raises StopRun: the run ends `interrupted` or `timed_out`


@sample(every=3600, timeout=60)
async def stubborn(ctx: TaskContext) -> None:
    """Never checks for a stop: only cancellation ends it."""
    ctx.log.info("stubborn started")
    await asyncio.sleep(3600)


@sample(every=3600, timeout=1)
async def slowpoke(ctx: TaskContext) -> None:
    """Loops on checkpoint past its 1 s timeout: stopped at the deadline (`timed_out`)."""
    while True:
        await ctx.checkpoint()
        await asyncio.sleep(0.02)


@sample(every=3600, timeout=1)
async def sleeper(ctx: TaskContext) -> None:
    """Never checkpoints: cancelled after the grace period (`timed_out`)."""
    await asyncio.sleep(3600)


@sample(every=0.5, timeout=10)
async def ticker(ctx: TaskContext) -> str:
    """A frequent task, to see the loop keep going (and pause/resume)."""
    return f"tick {ctx.scheduled_for.isoformat()}"


@sample(every=3600, timeout=10)
async def hourly(ctx: TaskContext) -> str:
    """An hourly task: runs at start, then only when triggered."""
    return "hourly done"


@sample(every=0.5, timeout=10, options={"path": ""})
async def slot_writer(ctx: TaskContext) -> str:
    """Appends its slot and run id to `slot_writer.path`: two workers must never write the
    same slot twice. One O_APPEND write per run, so lines from two processes never mix."""
    path = str(ctx.options["path"])
    if not path:
        raise RuntimeError("slot_writer.path is not set")
    line = f"{ctx.scheduled_for.isoformat()} {ctx.run_id} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    await asyncio.sleep(0.05)  # long enough for the other worker to try the same slot
    return "slot written"
