"""One run's deadline, stop and outcome, driven by a fake clock (no real waiting)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop.config.settings import Settings
from cronloop.definitions.context import StopReason, TaskContext
from cronloop.definitions.registry import TaskSpec
from cronloop.domain.clock import FakeClock
from cronloop.domain.outcome import Outcome
from cronloop.domain.schedule import Every
from cronloop.runtime.leases import LeaseKeeper
from cronloop.runtime.runner import RunEnd, RunEnvironment, Runner
from cronloop.store.sql.claims import TaskDeclaration, TaskStore
from cronloop.store.sql.engine import create_engine, session_factory
from cronloop.store.sql.migrate import upgrade


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    engine = create_engine(settings)
    await upgrade(engine)
    yield engine
    await engine.dispose()


class Harness:
    def __init__(self, engine: AsyncEngine, clock: FakeClock) -> None:
        self.clock = clock
        self.ended: RunEnd | None = None
        self.store = TaskStore(engine, worker_id="w")
        self.settings = Settings(grace_s=2.0)
        self.executor = ThreadPoolExecutor(2)
        self.env = RunEnvironment(
            store=self.store,
            settings=self.settings,
            clock=clock,
            db=session_factory(engine),
            executor=self.executor,
        )

    async def runner(
        self,
        func: Callable[..., Any],
        *,
        timeout_s: float = 10.0,
        blocking: bool = False,
        keeper: LeaseKeeper | None = None,
    ) -> Runner:
        spec = TaskSpec(
            name=func.__name__,
            func=func,
            schedule=Every(timedelta(minutes=1)),
            timeout_s=timeout_s,
            blocking=blocking,
        )
        await self.store.sync_tasks(
            [TaskDeclaration(spec.name, spec.schedule_text, timeout_s, self.clock.now())]
        )
        [claim] = await self.store.claim_due(self.clock.now(), 1, names=[spec.name])
        lease = keeper.track(claim, self.clock.monotonic()) if keeper else None
        return Runner(spec, claim, self.env, lease)

    async def drive(self, runner: Runner, step_s: float = 0.5, steps: int = 200) -> Outcome:
        """Run it while moving the fake clock forward, like time passing; the run's
        report is kept in `ended`."""
        task = asyncio.ensure_future(runner.run())
        for _ in range(steps):
            if task.done():
                break
            await asyncio.sleep(0.001)
            self.clock.advance(step_s)
        self.ended = await asyncio.wait_for(task, 10)
        return self.ended.outcome

    async def last(self) -> Any:
        return (await self.store.status())[0]


@pytest.fixture
async def h(sqlite: AsyncEngine) -> AsyncIterator[Harness]:
    harness = Harness(sqlite, FakeClock())
    yield harness
    harness.executor.shutdown(wait=False, cancel_futures=True)


async def test_success_records_message_and_next_run(h: Harness) -> None:
    async def ok(ctx: TaskContext) -> str:
        await ctx.checkpoint()
        return "did 3 things"

    runner = await h.runner(ok)
    assert await h.drive(runner) == Outcome.SUCCESS
    state = await h.last()
    assert state.last_message == "did 3 things" and state.runs == 1 and not state.running
    assert state.next_run == runner.claim.scheduled_for + timedelta(minutes=1)


async def test_checkpoint_raises_at_the_deadline_and_broad_except_cannot_swallow_it(
    h: Harness,
) -> None:
    seen: list[str] = []

    async def stubborn(ctx: TaskContext) -> None:
        while True:
            try:
                await ctx.checkpoint()
            except Exception:  # must not catch StopRun
                seen.append("swallowed")

    runner = await h.runner(stubborn, timeout_s=3)
    assert await h.drive(runner) == Outcome.TIMED_OUT
    assert seen == []
    assert "deadline" in (await h.last()).last_error
    assert (await h.last()).consecutive_failures == 1


async def test_a_task_without_checkpoints_is_cancelled_after_grace(h: Harness) -> None:
    async def sleeper(ctx: TaskContext) -> None:
        await asyncio.Event().wait()  # never returns, never checks

    runner = await h.runner(sleeper, timeout_s=3)
    assert await h.drive(runner) == Outcome.TIMED_OUT
    assert h.clock.monotonic() - runner.started_mono >= 3 + h.settings.grace_s
    assert "cancelled" in (await h.last()).last_error


async def test_a_task_that_ignores_cancellation_is_left_behind(h: Harness) -> None:
    release = asyncio.Event()

    async def deaf(ctx: TaskContext) -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    runner = await h.runner(deaf, timeout_s=1)
    outcome = await h.drive(runner)
    release.set()
    assert outcome == Outcome.TIMED_OUT and h.ended.straggler is not None
    assert "ignored cancellation" in (await h.last()).last_error


async def test_exceptions_are_failures_with_the_error(h: Harness) -> None:
    async def boom(ctx: TaskContext) -> None:
        raise ValueError("bad row 42")

    runner = await h.runner(boom)
    assert await h.drive(runner) == Outcome.FAILED
    assert (await h.last()).last_error == "ValueError: bad row 42"


async def test_shutdown_stop_is_interrupted_and_due_again(h: Harness) -> None:
    started = asyncio.Event()

    async def long(ctx: TaskContext) -> None:
        started.set()
        while True:
            await ctx.checkpoint()

    runner = await h.runner(long, timeout_s=100)
    task = asyncio.ensure_future(runner.run())
    await started.wait()
    runner.stop(StopReason.SHUTDOWN)
    assert (await asyncio.wait_for(task, 5)).outcome == Outcome.INTERRUPTED
    state = await h.last()
    assert state.next_run == runner.claim.scheduled_for and state.consecutive_failures == 0


async def test_abort_for_a_lost_lease_is_abandoned(h: Harness) -> None:
    started = asyncio.Event()

    async def forever(ctx: TaskContext) -> None:
        started.set()
        await asyncio.Event().wait()

    runner = await h.runner(forever, timeout_s=100)
    task = asyncio.ensure_future(runner.run())
    await started.wait()
    runner.abort(StopReason.LEASE_LOST)
    assert (await asyncio.wait_for(task, 5)).outcome == Outcome.ABANDONED


async def test_checkpoint_stops_a_run_whose_lease_can_no_longer_be_proven(h: Harness) -> None:
    """Frozen (SIGSTOP) or cut off past 2/3 of the lease: the next checkpoint ends the run
    by itself, before the lease keeper even gets a turn."""
    steps = []

    async def worker(ctx: TaskContext) -> None:
        while True:
            await ctx.checkpoint()
            steps.append(h.clock.monotonic())
            await asyncio.sleep(0)

    keeper = LeaseKeeper(h.store, h.clock, 30.0, h.env.health)  # 20 s of a 30 s lease
    runner = await h.runner(worker, timeout_s=100, keeper=keeper)
    assert runner.lease.valid_until() == h.clock.monotonic() + 20
    task = asyncio.ensure_future(runner.run())
    await asyncio.sleep(0.01)
    h.clock.advance(20)
    assert (await asyncio.wait_for(task, 5)).outcome == Outcome.ABANDONED
    assert steps and max(steps) < runner.lease.valid_until()
    assert "lease_lost" in (await h.last()).last_error


async def test_blocking_task_sees_should_stop_and_checkpoint_in_its_thread(h: Harness) -> None:
    threads: list[str] = []

    def crunch(ctx: TaskContext) -> str:
        threads.append(threading.current_thread().name)
        n = 0
        while True:
            ctx.checkpoint()  # unawaited in a thread: raises StopRun at the deadline
            n += 1
            time.sleep(0.001)

    runner = await h.runner(crunch, timeout_s=2, blocking=True)
    assert await h.drive(runner, step_s=0.5) == Outcome.TIMED_OUT
    assert threads and threads[0] != threading.main_thread().name


async def test_context_exposes_the_documented_fields(h: Harness) -> None:
    seen: dict[str, Any] = {}

    async def look(ctx: TaskContext) -> None:
        seen.update(
            run_id=ctx.run_id,
            scheduled_for=ctx.scheduled_for,
            deadline=ctx.deadline,
            time_left=ctx.time_left(),
            should_stop=ctx.should_stop,
            settings=ctx.settings,
        )
        async with ctx.db() as session:
            seen["db"] = (await session.execute(__import__("sqlalchemy").text("SELECT 1"))).scalar()

    runner = await h.runner(look, timeout_s=30)
    await h.drive(runner)
    assert seen["run_id"] == runner.claim.run_id and seen["db"] == 1
    assert seen["time_left"] == pytest.approx(30, abs=1) and seen["should_stop"] is False
    assert seen["deadline"] - seen["scheduled_for"] <= timedelta(seconds=31)


async def test_recording_is_retried_while_the_database_fails(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def ok(ctx: TaskContext) -> str:
        return "done"

    runner = await h.runner(ok)
    real = h.store.complete_many
    failures = [2]

    async def flaky(*args: Any, **kw: Any) -> bool:
        if failures[0]:
            failures[0] -= 1
            raise ConnectionError("Lost connection to MySQL server during query")
        return await real(*args, **kw)

    monkeypatch.setattr(h.store, "complete_many", flaky)
    assert await h.drive(runner, step_s=0.25) == Outcome.SUCCESS
    state = await h.last()
    assert failures == [0] and state.last_message == "done" and not state.running
