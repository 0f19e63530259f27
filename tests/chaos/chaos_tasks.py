"""Tasks for the chaos tests, loaded by real workers with `--task_modules=chaos_tasks`.

Every execution writes its own row in `cronloop_chaos_exec` through `ctx.db`, exactly as
an extension would: the test reads that table, not cronloop's, to count duplicate and
lost runs. A row is inserted when the task starts (`started`, `last_seen`), `last_seen`
moves while a long task works, and `finished` is set when the task's work is done, in
the same transaction as its last unit of work. So a row with `finished` is one execution
run to completion, and [started, last_seen] bounds when a process was really running it.

The scenario is chosen by environment variables, read at import:

- `CHAOS_RACE=N:PERIOD`: N tasks `race_000`... every PERIOD seconds, that record and end;
- `CHAOS_LONG=SECONDS`: a task `long` (first run at start) that works SECONDS seconds in
  0.1 s steps, each one's effects after a checkpoint: a line in the file `CHAOS_TRACE`
  (if set) and, unless `CHAOS_LONG_DB=0`, its `last_seen` in the database;
- `CHAOS_STEADY=PERIOD`: a well-behaved task `steady` every PERIOD seconds;
- `CHAOS_MISBEHAVE=names`: some of `blocker` (time.sleep in a coroutine: blocks the
  loop), `swallower` (ignores cancellation), `raiser` (raises), `overrunner` (ignores its
  deadline, but not cancellation);
- `CHAOS_TIMEOUT`: the timeout of the misbehaving tasks (default 1 s).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, insert, update

from cronloop import TaskContext, task
from cronloop.store.sql.tables import UTCDateTime

metadata = MetaData()
executions = Table(
    "cronloop_chaos_exec",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("run_id", String(36), nullable=False),
    Column("task", String(190), nullable=False),
    Column("scheduled_for", UTCDateTime(), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started", UTCDateTime(), nullable=False),
    Column("last_seen", UTCDateTime(), nullable=False),
    Column("finished", UTCDateTime()),
)

DDL = """
CREATE TABLE cronloop_chaos_exec (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    run_id VARCHAR(36) NOT NULL,
    task VARCHAR(190) NOT NULL,
    scheduled_for DATETIME(6) NOT NULL,
    pid INT NOT NULL,
    started DATETIME(6) NOT NULL,
    last_seen DATETIME(6) NOT NULL,
    finished DATETIME(6) NULL,
    KEY ix_chaos_task (task, scheduled_for)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4
"""


def _now() -> datetime:
    return datetime.now(UTC)


async def begin(ctx: TaskContext) -> int:
    """Insert this execution's row; returns its id."""
    now = _now()
    async with ctx.db.begin() as session:
        result = await session.execute(
            insert(executions).values(
                run_id=ctx.run_id,
                task=ctx.task_name,
                scheduled_for=ctx.scheduled_for,
                pid=os.getpid(),
                started=now,
                last_seen=now,
            )
        )
        return int(cast(Any, result).inserted_primary_key[0])


async def beat(ctx: TaskContext, row: int, *, done: bool = False) -> None:
    """Mark progress (one unit of work), and completion with the last one."""
    now = _now()
    values: dict[str, Any] = {"last_seen": now}
    if done:
        values["finished"] = now
    async with ctx.db.begin() as session:
        await session.execute(update(executions).where(executions.c.id == row).values(**values))


async def record_once(ctx: TaskContext) -> None:
    """A quick task's whole execution in one transaction: started and finished."""
    now = _now()
    async with ctx.db.begin() as session:
        await session.execute(
            insert(executions).values(
                run_id=ctx.run_id,
                task=ctx.task_name,
                scheduled_for=ctx.scheduled_for,
                pid=os.getpid(),
                started=now,
                last_seen=now,
                finished=now,
            )
        )


def _define_race(spec: str) -> None:
    count, period = spec.split(":")

    async def race(ctx: TaskContext) -> None:
        await ctx.checkpoint()
        await record_once(ctx)

    for i in range(int(count)):
        task(name=f"race_{i:03d}", every=float(period), timeout=30)(race)


def trace(ctx: TaskContext, step: int) -> None:
    """One line per unit of work in a local file: evidence that does not need the
    database (a partitioned worker cannot write its progress there)."""
    path = os.environ.get("CHAOS_TRACE")
    if path:
        with open(path, "a", encoding="ascii") as out:
            out.write(f"{ctx.run_id} {os.getpid()} {time.time():.6f} {step}\n")


def _define_long(seconds: float) -> None:
    use_db = os.environ.get("CHAOS_LONG_DB", "1") == "1"

    async def long(ctx: TaskContext) -> str:
        row = await begin(ctx) if use_db else 0
        ctx.log.info("chaos long started", pid=os.getpid())
        steps = int(seconds / 0.1)
        for i in range(steps):
            await asyncio.sleep(0.1)  # the work of one step...
            await ctx.checkpoint()  # ...then, if the run may go on, its effects
            trace(ctx, i)
            if use_db:
                await beat(ctx, row, done=i == steps - 1)
        return f"worked {seconds:g}s"

    task(name="long", every=3600, timeout=seconds * 4)(long)


def _define_steady(period: float) -> None:
    async def steady(ctx: TaskContext) -> None:
        await record_once(ctx)

    task(name="steady", every=period, timeout=10)(steady)


async def blocker(ctx: TaskContext) -> None:
    """Blocks the event loop: no await for longer than the watchdog allows."""
    row = await begin(ctx)
    time.sleep(float(os.environ.get("CHAOS_BLOCK_S", "30")))  # noqa: ASYNC251 - on purpose
    await beat(ctx, row, done=True)


async def swallower(ctx: TaskContext) -> None:
    """Ignores its deadline and swallows every cancellation for a long time."""
    row = await begin(ctx)
    until = time.monotonic() + float(os.environ.get("CHAOS_SWALLOW_S", "8"))
    while time.monotonic() < until:
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            ctx.log.info("chaos swallower swallowed a cancellation")
    await beat(ctx, row, done=True)


async def raiser(ctx: TaskContext) -> None:
    await record_once(ctx)
    raise RuntimeError("chaos raiser fails on purpose")


async def overrunner(ctx: TaskContext) -> None:
    """Never looks at its deadline; cancellation ends it."""
    row = await begin(ctx)
    await asyncio.sleep(3600)
    await beat(ctx, row, done=True)


_MISBEHAVING = {
    "blocker": (blocker, 3),
    "swallower": (swallower, 2),
    "raiser": (raiser, 6),
    "overrunner": (overrunner, 2),
}


def _define_misbehaving(names: str) -> None:
    timeout = float(os.environ.get("CHAOS_TIMEOUT", "1"))
    for name in filter(None, (n.strip() for n in names.split(","))):
        func, every = _MISBEHAVING[name]
        task(name=name, every=every, timeout=timeout)(func)


def _dump_tasks(signum: int, frame: Any) -> None:
    """SIGUSR1: print every asyncio task's stack, so a test can tell where a worker that
    does not exit is waiting (thread stacks alone show only an idle event loop)."""
    loop = asyncio.events._get_running_loop()
    tasks = asyncio.all_tasks(loop) if loop is not None else set()
    print(f"--- {len(tasks)} asyncio tasks (SIGUSR1) ---", file=sys.stderr, flush=True)
    for t in tasks:
        t.print_stack(file=sys.stderr)
    sys.stderr.flush()


signal.signal(signal.SIGUSR1, _dump_tasks)

if os.environ.get("CHAOS_RACE"):
    _define_race(os.environ["CHAOS_RACE"])
if os.environ.get("CHAOS_LONG"):
    _define_long(float(os.environ["CHAOS_LONG"]))
if os.environ.get("CHAOS_STEADY"):
    _define_steady(float(os.environ["CHAOS_STEADY"]))
if os.environ.get("CHAOS_MISBEHAVE"):
    _define_misbehaving(os.environ["CHAOS_MISBEHAVE"])
