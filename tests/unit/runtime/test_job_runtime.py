"""The job side of the loop on a real SQLite table with a fake clock: attempts run with
their arguments, retries with backoff, permanent failures, per-kind concurrency,
deadlines, and a shutdown that gives an attempt back."""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop.config.settings import Settings
from cronloop.definitions.context import TaskContext
from cronloop.definitions.jobs import JobSpec, PermanentJobError
from cronloop.definitions.registry import Registry
from cronloop.domain.clock import FakeClock
from cronloop.domain.jobs import JobState, RetryRule
from cronloop.runtime.jobs import BUSY_LINGER_S, BUSY_POLL_S, JobSide, _keywords
from cronloop.runtime.runner import RunEnvironment
from cronloop.runtime.supervisor import Supervisor
from cronloop.store.sql.engine import create_engine, session_factory
from cronloop.store.sql.migrate import upgrade
from cronloop.store.sql.store import SqlStore
from cronloop.store.sql.tables import jobs


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'j.db'}"))
    await upgrade(engine)
    yield engine
    await engine.dispose()


def spec(
    name: str, func: Callable[..., Any], *, retry: RetryRule | None = None, **kw: Any
) -> JobSpec:
    return JobSpec(
        name=name,
        func=func,
        timeout_s=kw.pop("timeout_s", 60.0),
        retry=retry or RetryRule(0, 0.0, False),
        concurrency=kw.pop("concurrency", None),
    )


def supervisor(engine: AsyncEngine, clock: FakeClock, *specs: JobSpec, **opts: Any) -> Supervisor:
    config = Settings(max_lifetime=0, lifetime_jitter_s=0, poll_interval=1.0, grace_s=1.0, **opts)
    store = SqlStore(engine, worker_id="w")
    env = RunEnvironment(store=store, settings=config, clock=clock, db=session_factory(engine))
    return Supervisor(Registry({}, {s.name: s for s in specs}), env, once=True)


async def run_once(sup: Supervisor, clock: FakeClock, step_s: float = 0.5) -> int:
    """Run `--once` to its end, moving the fake clock while it sleeps (bounded)."""
    task = asyncio.ensure_future(sup.run())
    for _ in range(400):
        if task.done():
            return task.result()
        await asyncio.sleep(0.005)
        clock.advance(step_s)
    task.cancel()
    raise AssertionError("run --once did not end")


async def test_an_attempt_gets_its_arguments_and_the_job_is_done(sqlite: AsyncEngine) -> None:
    clock = FakeClock()
    seen: list[tuple[str, int]] = []

    async def hook(ctx: TaskContext, url: str, n: int) -> str:
        await ctx.checkpoint()
        seen.append((url, n))
        return "sent"

    sup = supervisor(sqlite, clock, spec("hook", hook))
    store = SqlStore(sqlite)
    job_id = await store.enqueue_job("hook", {"url": "https://x", "n": 2}, run_at=clock.now())
    assert await run_once(sup, clock) == 0
    assert seen == [("https://x", 2)]
    info = await store.job_info(job_id)
    assert (info.state, info.attempts) == (JobState.DONE, 1)


async def test_failures_are_retried_with_backoff_then_error(sqlite: AsyncEngine) -> None:
    clock = FakeClock()
    attempts: list[float] = []

    async def flaky(ctx: TaskContext) -> None:
        attempts.append(clock.monotonic())
        raise RuntimeError("upstream 503")

    sup = supervisor(sqlite, clock, spec("flaky", flaky, retry=RetryRule(2, 10.0, True)))
    sup.once = False  # --once would end before the retries are due
    store = SqlStore(sqlite)
    job_id = await store.enqueue_job("flaky", {}, run_at=clock.now())
    run = asyncio.ensure_future(sup.run())
    # small steps: the 2 s of slack the gaps allow is 20 steps (100 ms or more of wall
    # time) for the worker to see the retry and claim it; 4 steps of 0.5 s were too few
    # on a loaded machine
    for _ in range(2000):
        if (await store.job_info(job_id)).state == JobState.ERROR:
            break
        await asyncio.sleep(0.005)
        clock.advance(0.1)
    sup.request_stop()
    await asyncio.wait_for(run, 5)
    info = await store.job_info(job_id)
    assert (info.state, info.attempts) == (JobState.ERROR, 3)
    assert info.last_error == "RuntimeError: upstream 503"
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert len(gaps) == 2 and 10 <= gaps[0] < 12 and 20 <= gaps[1] < 22


async def test_a_permanent_failure_skips_the_retries(sqlite: AsyncEngine) -> None:
    clock = FakeClock()

    async def bad(ctx: TaskContext) -> None:
        raise PermanentJobError("no such ticket")

    sup = supervisor(sqlite, clock, spec("bad", bad, retry=RetryRule(5, 0.0, False)))
    store = SqlStore(sqlite)
    job_id = await store.enqueue_job("bad", {}, run_at=clock.now())
    assert await run_once(sup, clock) == 0
    info = await store.job_info(job_id)
    assert (info.state, info.attempts) == (JobState.ERROR, 1)
    assert info.last_error is not None and "no such ticket" in info.last_error


async def test_per_kind_concurrency_caps_attempts_at_once(sqlite: AsyncEngine) -> None:
    clock = FakeClock()
    running = 0
    peak = 0

    async def slow(ctx: TaskContext, i: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await clock.sleep(1.0)
        running -= 1

    sup = supervisor(sqlite, clock, spec("slow", slow, concurrency=2), max_concurrency=10)
    store = SqlStore(sqlite)
    ids = [await store.enqueue_job("slow", {"i": i}, run_at=clock.now()) for i in range(6)]
    assert await run_once(sup, clock) == 0
    assert peak == 2
    assert {(await store.job_info(i)).state for i in ids} == {JobState.DONE}


async def test_a_timed_out_attempt_is_retried(sqlite: AsyncEngine) -> None:
    clock = FakeClock()
    calls = 0

    async def hangs_once(ctx: TaskContext) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            while True:
                await ctx.checkpoint()
                await clock.sleep(0.5)

    sup = supervisor(
        sqlite, clock, spec("hangs", hangs_once, timeout_s=2.0, retry=RetryRule(1, 0.0, False))
    )
    store = SqlStore(sqlite)
    job_id = await store.enqueue_job("hangs", {}, run_at=clock.now())
    assert await run_once(sup, clock) == 0
    info = await store.job_info(job_id)
    assert (info.state, info.attempts, calls) == (JobState.DONE, 2, 2)
    assert info.last_error is not None and "deadline" in info.last_error


async def test_a_shutdown_gives_the_attempt_back(sqlite: AsyncEngine) -> None:
    clock = FakeClock()
    started = asyncio.Event()

    async def long(ctx: TaskContext) -> None:
        started.set()
        while True:
            await ctx.checkpoint()
            await clock.sleep(0.5)

    sup = supervisor(sqlite, clock, spec("long", long), shutdown_grace=1.0)
    sup.once = False
    store = SqlStore(sqlite)
    job_id = await store.enqueue_job("long", {}, run_at=clock.now())
    run = asyncio.ensure_future(sup.run())
    await asyncio.wait_for(started.wait(), 5)
    sup.request_stop()
    for _ in range(100):
        if run.done():
            break
        await asyncio.sleep(0.005)
        clock.advance(0.5)
    assert run.done() and run.result() == 0
    info = await store.job_info(job_id)
    assert (info.state, info.attempts) == (JobState.PLANNED, 0)


async def test_housekeeping_prunes_finished_jobs_in_batches(
    sqlite: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cronloop.runtime.jobs as runtime_jobs

    monkeypatch.setattr(runtime_jobs, "PRUNE_BATCH", 2)
    clock = FakeClock()

    async def quick(ctx: TaskContext) -> None:
        pass

    sup = supervisor(sqlite, clock, spec("quick", quick))
    store = SqlStore(sqlite)
    for _ in range(5):
        await store.enqueue_job("quick", {}, run_at=clock.now())
    kept = await store.enqueue_job("quick", {}, run_at=clock.now() + timedelta(days=30))
    assert await run_once(sup, clock) == 0
    future = datetime.now(UTC) + timedelta(days=1)  # `finished` is the database's clock
    assert await sup.jobs.prune(future) == 5
    assert [(c.state, c.count) for c in await store.job_counts()] == [(JobState.PLANNED, 1)]
    assert (await store.job_info(kept)).state == JobState.PLANNED


async def test_arguments_the_handler_does_not_take_fail_for_good(sqlite: AsyncEngine) -> None:
    clock = FakeClock()
    calls = 0

    async def hook(ctx: TaskContext, url: str) -> None:
        nonlocal calls
        calls += 1

    sup = supervisor(sqlite, clock, spec("hook", hook, retry=RetryRule(5, 0.0, False)))
    store = SqlStore(sqlite)
    job_id = await store.enqueue_job("hook", {"uri": "https://x"}, run_at=clock.now())
    assert await run_once(sup, clock) == 0
    info = await store.job_info(job_id)
    assert (info.state, info.attempts, calls) == (JobState.ERROR, 1, 0)
    assert info.last_error is not None and "does not take these arguments" in info.last_error


async def test_while_jobs_keep_coming_the_side_asks_often_then_backs_off(
    sqlite: AsyncEngine,
) -> None:
    """Enqueue-to-start is bounded by BUSY_POLL_S, not poll_interval, while jobs arrive;
    BUSY_LINGER_S after the last ask that found one, idle asks are poll_interval apart."""

    async def noop(ctx: TaskContext) -> None:
        return None

    clock = FakeClock()
    config = Settings(poll_interval=2.0)
    store = SqlStore(sqlite, worker_id="w")
    env = RunEnvironment(store=store, settings=config, clock=clock, db=session_factory(sqlite))
    side = JobSide({"noop": spec("noop", noop)}, store, env)
    assert await side.acquire(10) == []  # an idle queue: the next ask a poll later
    assert side.sleep_cap_s(10) == pytest.approx(2.0)
    assert await side.acquire(10) == []  # not yet time: no query, no change
    clock.advance(2.0)
    await store.enqueue_job("noop", {}, run_at=clock.now())
    assert len(await side.acquire(10)) == 1
    assert side.sleep_cap_s(10) == pytest.approx(BUSY_POLL_S)
    clock.advance(BUSY_POLL_S)
    assert await side.acquire(10) == []  # empty, but a job came less than a linger ago
    assert side.sleep_cap_s(10) == pytest.approx(BUSY_POLL_S)
    clock.advance(BUSY_LINGER_S)
    assert await side.acquire(10) == []
    assert side.sleep_cap_s(10) == pytest.approx(2.0)


def test_the_quick_argument_check_agrees_with_signature_bind() -> None:
    """Whenever the cached keyword check accepts a job's arguments, binding them to the
    handler (after its context) succeeds; every case bind refuses, it refuses too."""

    def plain(ctx: Any, url: str, n: int = 1) -> None: ...
    def kw_only(ctx: Any, *, url: str, n: int = 1) -> None: ...
    def var_kw(ctx: Any, url: str, **rest: Any) -> None: ...
    def var_pos(ctx: Any, *more: Any, url: str) -> None: ...
    def pos_only(ctx: Any, /, url: str) -> None: ...
    def no_ctx(*, url: str) -> None: ...

    cases: list[dict[str, Any]] = [
        {},
        {"url": "u"},
        {"url": "u", "n": 2},
        {"n": 2},
        {"url": "u", "x": 1},
        {"ctx": 1, "url": "u"},
        {"more": 1, "url": "u"},
        {"rest": 1, "url": "u"},
    ]
    for func in (plain, kw_only, var_kw, var_pos, pos_only, no_ctx):
        quick = _keywords(func)
        for args in cases:
            try:
                inspect.signature(func).bind(None, **args)
                binds = True
            except TypeError:
                binds = False
            if quick is not None:
                assert quick.take(args) == binds, (func.__name__, args)
    assert _keywords(no_ctx) is None  # no context parameter: bind decides


async def test_jobs_that_lost_a_worker_before_run_one_at_a_time(sqlite: AsyncEngine) -> None:
    """Suspects (struck before) run beside no other suspect on a worker, so a poison job
    that kills this worker again takes down fresh jobs, never the bystanders of its last
    crash; the fresh jobs still run side by side."""
    clock = FakeClock()
    running: dict[bool, int] = {True: 0, False: 0}
    peak: dict[bool, int] = {True: 0, False: 0}

    async def work(ctx: TaskContext, i: int, suspect: bool) -> None:
        running[suspect] += 1
        peak[suspect] = max(peak[suspect], running[suspect])
        await clock.sleep(1.0)
        running[suspect] -= 1

    sup = supervisor(sqlite, clock, spec("work", work), max_concurrency=10)
    sup.once = False
    store = SqlStore(sqlite)
    ids = [
        await store.enqueue_job("work", {"i": i, "suspect": i < 3}, run_at=clock.now())
        for i in range(8)
    ]
    async with sqlite.begin() as conn:  # three of them lost a worker before
        await conn.execute(update(jobs).where(jobs.c.id.in_(ids[:3])).values(strikes=1))
    run = asyncio.ensure_future(sup.run())
    for _ in range(400):
        if {(await store.job_info(i)).state for i in ids} == {JobState.DONE}:
            break
        await asyncio.sleep(0.005)
        clock.advance(0.25)
    sup.request_stop()
    await asyncio.wait_for(run, 5)
    assert {(await store.job_info(i)).state for i in ids} == {JobState.DONE}
    assert peak == {True: 1, False: 5}
