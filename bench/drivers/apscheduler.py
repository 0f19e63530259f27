"""APScheduler 3.11 as users deploy it, and the instruments the scenarios read it with.

An `AsyncIOScheduler` on the stdlib asyncio loop (`asyncio.run`, not uvloop), one
`SQLAlchemyJobStore(url=sync_url)`, the default `AsyncIOExecutor`, and `async def` no-op
jobs referenced as `bench.drivers.apscheduler:tick` (the job store pickles that
reference, so the job body is this module's, imported, never a `__main__` copy). Job
defaults make APScheduler run every scheduled time however late
(`misfire_grace_time=None`, `coalesce=False`); the runs it still skips (`max_instances=1`
reached, misfires) are counted from its events and reported as `missed`.

How APScheduler works, which explains most figures: each wake-up (`_process_jobs`) runs on
the event loop and is synchronous. It SELECTs every due job (unpickling each), submits it
(an asyncio task that starts only after the wake-up returns), then UPDATEs (or, for a
one-shot job, DELETEs) each job in its own transaction, and finally SELECTs the earliest
next run time to arm a timer. The loop is blocked for the whole wake-up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
)
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from bench.child import ChildArgs, ChildResult
from bench.databases import server_cpu_s, server_questions
from bench.measure import StatementCounter, cpu_ms_per, cpu_s, percentile, rss_mb

TICK = "bench.drivers.apscheduler:tick"  # the reference the job store pickles
JOB_DEFAULTS = {"misfire_grace_time": None, "coalesce": False, "max_instances": 1}
DAY = timedelta(days=1)
LOOP_NOTE = "event loop: stdlib asyncio via asyncio.run (cronloop's CLI uses uvloop)"


# -- the job and what it records --------------------------------------------------------------


@dataclass
class Recorder:
    """What the job body records. `keep=False` only counts, so that keeping 100,000 start
    times does not show up in the memory scenario's RSS."""

    keep: bool = True
    count: int = 0
    starts: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    last_end: float | None = None
    target: int | None = None
    reached: asyncio.Event | None = None
    reached_at: float | None = None
    rss_at: int | None = None
    rss_sample: float | None = None

    def reset(self, keep: bool = True) -> None:
        """Back to a fresh state (the job body reaches this one instance)."""
        fresh = Recorder(keep=keep)
        self.__dict__.update(fresh.__dict__)

    def started(self, index: int) -> None:
        now = time.time()
        self.count += 1
        if self.keep:
            self.starts[index].append(now)
        if self.count == self.rss_at:
            self.rss_sample = rss_mb()
        if self.count == self.target and self.reached is not None:
            self.reached_at = now
            self.reached.set()

    def all_starts(self) -> list[float]:
        return [t for times in self.starts.values() for t in times]


RECORDER = Recorder()


async def tick(index: int) -> None:
    """The job body: a no-op coroutine that notes when it started and ended."""
    RECORDER.started(index)
    RECORDER.last_end = time.time()


def job_id(index: int) -> str:
    return f"j{index}"


def job_index(ident: str) -> int | None:
    return int(ident[1:]) if ident.startswith("j") and ident[1:].isdigit() else None


# -- the scheduler and its instruments --------------------------------------------------------


def make_scheduler(sync_url: str) -> tuple[AsyncIOScheduler, SQLAlchemyJobStore]:
    """The deployment under test. UTC so that no local-time rule takes part."""
    store = SQLAlchemyJobStore(url=sync_url)
    scheduler = AsyncIOScheduler(
        jobstores={"default": store}, job_defaults=JOB_DEFAULTS, timezone=UTC
    )
    return scheduler, store


def configure_logging(args: ChildArgs) -> str:
    """APScheduler logs two INFO lines per run; keep WARNING (misfires, skips) in a file."""
    path = args.workdir / f"aps-{args.scenario}.log"
    logging.basicConfig(
        filename=path,
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return (
        f"logging: apscheduler at WARNING into {path.name} (its INFO is two lines per run;"
        " cronloop writes one INFO line per run)"
    )


class Probe:
    """Listens to APScheduler's events (which scheduled times each job was submitted for,
    what it skipped) and times each wake-up, i.e. how long the event loop was blocked."""

    def __init__(self, scheduler: AsyncIOScheduler, keep: bool = True) -> None:
        self.keep = keep
        self.scheduled: dict[int, list[float]] = defaultdict(list)
        self.submitted = 0
        self.missed = 0
        self.errors = 0
        self.max_lag_s = 0.0
        self.wakeup_ms: list[float] = []
        scheduler.add_listener(
            self._on_event,
            EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED | EVENT_JOB_ERROR,
        )
        process_jobs = scheduler._process_jobs

        def timed_process_jobs() -> float | None:
            t = time.perf_counter()
            try:
                return process_jobs()
            finally:
                self.wakeup_ms.append((time.perf_counter() - t) * 1000)

        scheduler._process_jobs = timed_process_jobs  # type: ignore[method-assign]

    def _on_event(self, event: Any) -> None:
        if event.code == EVENT_JOB_SUBMITTED:
            times = [t.timestamp() for t in event.scheduled_run_times]
            self.submitted += len(times)
            self.max_lag_s = max(self.max_lag_s, time.time() - times[0])
            index = job_index(event.job_id)
            if self.keep and index is not None:
                self.scheduled[index].extend(times)
        elif event.code == EVENT_JOB_MAX_INSTANCES:
            self.missed += len(event.scheduled_run_times)
        elif event.code == EVENT_JOB_MISSED:
            self.missed += 1
        else:
            self.errors += 1

    def figures(self) -> dict[str, float]:
        waits = self.wakeup_ms
        figures: dict[str, float] = {
            "missed": self.missed,
            "errors": self.errors,
            "wakeups": len(waits),
        }
        if waits:
            figures.update({"wakeup_p50_ms": percentile(waits, 50), "wakeup_max_ms": max(waits)})
        return figures


class Window:
    """The measured window: statements of this process, the server's `Questions` and this
    process's CPU between `open()` and `close()`."""

    def __init__(self, counter: StatementCounter, sync_url: str, probe: Probe) -> None:
        self.counter, self.sync_url, self.probe = counter, sync_url, probe
        self.start = self.end = 0.0
        self._q0: int | None = None
        self._db_cpu0: float | None = None
        self._cpu0 = 0.0

    async def open(self) -> None:
        # Read in a thread so the loop keeps scheduling; its own statements come before reset.
        self._q0 = await asyncio.to_thread(server_questions, self.sync_url)
        self._db_cpu0 = await asyncio.to_thread(server_cpu_s, self.sync_url)
        self.counter.reset()
        self.probe.wakeup_ms.clear()
        self._cpu0 = cpu_s()
        self.start = time.time()

    async def close(self, runs: int) -> dict[str, float]:
        self.end = time.time()
        cpu = cpu_s() - self._cpu0
        statements = self.counter.count
        db_cpu1 = await asyncio.to_thread(server_cpu_s, self.sync_url)
        q1 = await asyncio.to_thread(server_questions, self.sync_url)
        wall = self.end - self.start
        figures: dict[str, float] = {
            "runs": runs,
            "statements": statements,
            "window_s": round(wall, 3),
            "cpu_pct": 100 * cpu / wall if wall > 0 else math.nan,
            "cpu_ms_per_run": cpu_ms_per(cpu, runs),
        }
        if runs:
            figures["statements_per_run"] = statements / runs
        if self._db_cpu0 is not None and db_cpu1 is not None:
            figures["db_cpu_ms_per_run"] = cpu_ms_per(db_cpu1 - self._db_cpu0, runs)
        if self._q0 is not None and q1 is not None:
            figures["questions"] = q1 - self._q0
            if runs:
                figures["questions_per_run"] = (q1 - self._q0) / runs
        return figures


async def sleep_until(ts: float) -> None:
    await asyncio.sleep(max(0.0, ts - time.time()))


async def wait_until(done: Callable[[], bool], deadline: float, poll_s: float = 0.05) -> bool:
    while not done():
        if time.time() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


async def stop(scheduler: AsyncIOScheduler) -> None:
    """Pause (no more wake-ups) and let the submitted runs finish, at most 10 s: shutdown
    cancels them and APScheduler logs each as an ERROR. AsyncIOScheduler.shutdown only
    queues the shutdown on the loop, so let that run too."""
    scheduler.pause()
    executor = scheduler._lookup_executor("default")
    await wait_until(lambda: not executor._pending_futures, time.time() + 10)
    scheduler.shutdown(wait=False)
    await asyncio.sleep(0.1)


def add_interval_jobs(scheduler: AsyncIOScheduler, tasks: int, every_s: float, t0: float) -> float:
    """`tasks` interval jobs, job i first due at t0 + every_s*i/tasks. Added while the
    scheduler is paused, so each add is one INSERT and no wake-up. Returns seconds taken."""
    began = time.perf_counter()
    for i in range(tasks):
        start = datetime.fromtimestamp(t0 + every_s * i / tasks, UTC)
        scheduler.add_job(
            TICK,
            IntervalTrigger(seconds=every_s, start_date=start, timezone=UTC),
            args=(i,),
            id=job_id(i),
            name="tick",
        )
    return time.perf_counter() - began


class SetUp(NamedTuple):
    result: ChildResult
    counter: StatementCounter
    scheduler: AsyncIOScheduler
    store: SQLAlchemyJobStore
    probe: Probe
    recorder: Recorder


def set_up(args: ChildArgs, keep: bool = True, timed: Callable[[str], bool] | None = None) -> SetUp:
    """What every scenario starts with: logging, the statement counter, a fresh recorder and
    the scheduler started paused (its table is created; nothing runs before resume(), and
    jobs added meanwhile are plain INSERTs without a wake-up each)."""
    result = ChildResult(notes=[LOOP_NOTE, configure_logging(args)])
    counter = StatementCounter(timed=timed).install()
    scheduler, store = make_scheduler(args.sync_url)
    probe = Probe(scheduler, keep=keep)
    RECORDER.reset(keep)
    scheduler.start(paused=True)
    server_cpu_s(args.sync_url)  # find the server's process now, not in a window
    result.notes.extend(backend_notes(store))
    return SetUp(result, counter, scheduler, store, probe, RECORDER)


def backend_notes(store: SQLAlchemyJobStore) -> list[str]:
    """On SQLite, the journal settings APScheduler's plain engine leaves (cronloop uses WAL):
    every job update is a commit, so they decide what a commit costs."""
    if store.engine.dialect.name != "sqlite":
        return []
    with store.engine.connect() as conn:
        journal = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    return [
        f"SQLite as APScheduler opens it: journal_mode={journal}, synchronous={synchronous}"
        " (2 = FULL); cronloop uses WAL"
    ]
