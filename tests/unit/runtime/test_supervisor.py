"""The loop with a fake clock: concurrency, no self-overlap, lifetime exit, drain."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop import exitcodes
from cronloop.config.settings import Settings
from cronloop.definitions.context import TaskContext
from cronloop.definitions.registry import Registry, TaskSpec
from cronloop.domain.clock import FakeClock
from cronloop.domain.schedule import Every
from cronloop.runtime.runner import RunEnvironment
from cronloop.runtime.supervisor import Supervisor
from cronloop.store.sql.claims import TaskDeclaration, TaskStore
from cronloop.store.sql.engine import create_engine, session_factory
from cronloop.store.sql.migrate import upgrade


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 's.db'}"))
    await upgrade(engine)
    yield engine
    await engine.dispose()


async def make(
    engine: AsyncEngine,
    clock: FakeClock,
    funcs: dict[str, tuple[Callable[..., Any], float]],
    **settings: Any,
) -> Supervisor:
    opts: dict[str, Any] = {
        "max_lifetime": 0,
        "lifetime_jitter_s": 0,
        "poll_interval": 1.0,
        "shutdown_grace": 1.0,
        "grace_s": 1.0,
        **settings,
    }
    config = Settings(**opts)
    specs = {
        name: TaskSpec(name=name, func=f, schedule=Every(timedelta(seconds=every)), timeout_s=60)
        for name, (f, every) in funcs.items()
    }
    store = TaskStore(engine, worker_id="w")
    await store.sync_tasks(
        TaskDeclaration(n, s.schedule_text, 60, clock.now()) for n, s in specs.items()
    )
    env = RunEnvironment(store=store, settings=config, clock=clock, db=session_factory(engine))
    return Supervisor(Registry(specs), env)


async def tick_until(
    clock: FakeClock, done: Callable[[], bool], step_s: float = 0.25, limit: int = 400
) -> None:
    for _ in range(limit):
        if done():
            return
        await asyncio.sleep(0.005)
        clock.advance(step_s)
    raise AssertionError("condition not reached")


async def test_once_runs_due_tasks_concurrently_and_exits_zero(sqlite: AsyncEngine) -> None:
    both = asyncio.Barrier(2)

    async def a(ctx: TaskContext) -> None:
        await asyncio.wait_for(both.wait(), 5)  # only passes if b runs at the same time

    async def b(ctx: TaskContext) -> None:
        await asyncio.wait_for(both.wait(), 5)

    sup = await make(sqlite, FakeClock(), {"a": (a, 60), "b": (b, 60)})
    sup.once = True
    assert await asyncio.wait_for(sup.run(), 10) == exitcodes.OK
    assert {s.name: s.last_outcome for s in await sup.store.status()} == {
        "a": "success",
        "b": "success",
    }


async def test_once_exits_when_its_last_run_ends_while_the_loop_sleeps(
    sqlite: AsyncEngine,
) -> None:
    # Regression (issue 15): `--once` slept until its next wake (a poll interval on a real
    # clock; forever on this fake one) after its last run, because a run whose task is due
    # no sooner than a known due time did not wake the loop. Here `quick` ends first and
    # wakes the loop (its next run is the first known), the loop sleeps again while `late`
    # still runs, and `late` ends with the same next run. 3.11's scheduling happened to end
    # both runs in one step of the loop; 3.12 and 3.13 showed the hang.
    async def quick(ctx: TaskContext) -> None:
        return None

    async def late(ctx: TaskContext) -> None:
        for _ in range(200):  # long enough for the loop to be asleep on every Python
            await asyncio.sleep(0)

    sup = await make(sqlite, FakeClock(), {"quick": (quick, 60), "late": (late, 60)})
    sup.once = True
    assert await asyncio.wait_for(sup.run(), 5) == exitcodes.OK
    assert {s.name: s.last_outcome for s in await sup.store.status()} == {
        "quick": "success",
        "late": "success",
    }


async def test_a_slow_task_never_overlaps_itself_nor_delays_others(sqlite: AsyncEngine) -> None:
    clock = FakeClock()
    active = [0]
    overlaps = [0]
    fast_runs: list[float] = []
    slow_done = [0]

    async def slow(ctx: TaskContext) -> None:
        active[0] += 1
        overlaps[0] = max(overlaps[0], active[0])
        start = clock.monotonic()
        while clock.monotonic() - start < 3:  # noqa: ASYNC110 - the fake clock moves, not an event
            await asyncio.sleep(0.001)
        active[0] -= 1
        slow_done[0] += 1

    async def fast(ctx: TaskContext) -> None:
        fast_runs.append(clock.monotonic())

    sup = await make(sqlite, clock, {"slow": (slow, 1), "fast": (fast, 1)})
    run = asyncio.ensure_future(sup.run())
    await tick_until(
        clock, lambda: slow_done[0] >= 2 and len(fast_runs) >= 6, step_s=0.1, limit=2000
    )
    sup.request_stop()
    await asyncio.wait_for(run, 10)
    assert overlaps[0] == 1
    gaps = [b - a for a, b in itertools.pairwise(fast_runs)]
    # held back by the slow task's 3 s runs, the fast one would show gaps of 3 s or more
    assert max(gaps) < 2.5


async def test_lifetime_exit_75_interrupts_running_tasks(sqlite: AsyncEngine) -> None:
    clock = FakeClock()
    seen_stop = asyncio.Event()

    async def long(ctx: TaskContext) -> None:
        while True:
            if ctx.should_stop:
                seen_stop.set()
            await ctx.checkpoint()
            await asyncio.sleep(0.001)

    sup = await make(sqlite, clock, {"long": (long, 3600)}, max_lifetime=10)
    run = asyncio.ensure_future(sup.run())
    await tick_until(clock, run.done, step_s=0.5)
    assert run.result() == exitcodes.TEMPFAIL
    [state] = await sup.store.status()
    assert state.last_outcome == "interrupted" and not state.running
    assert state.next_run is not None and state.next_run <= clock.now()


async def test_second_stop_request_cancels_at_once(sqlite: AsyncEngine) -> None:
    clock = FakeClock()
    started = asyncio.Event()

    async def deafish(ctx: TaskContext) -> None:
        started.set()
        await asyncio.Event().wait()  # no checkpoints: only cancellation ends it

    sup = await make(sqlite, clock, {"d": (deafish, 3600)}, shutdown_grace=3600)
    run = asyncio.ensure_future(sup.run())
    await tick_until(clock, started.is_set)
    sup.request_stop()
    await asyncio.sleep(0.05)
    assert not run.done()  # waiting out the (long) grace
    sup.request_stop()
    assert await asyncio.wait_for(run, 5) == exitcodes.OK
    assert (await sup.store.status())[0].last_outcome == "interrupted"


async def test_a_database_outage_does_not_stop_the_loop(
    sqlite: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    runs = [0]

    async def t(ctx: TaskContext) -> None:
        runs[0] += 1

    sup = await make(sqlite, clock, {"t": (t, 1)})
    real = sup.store.claim_next
    failing = [True]

    async def flaky(*args: Any, **kw: Any) -> Any:
        if failing[0]:
            raise ConnectionError("MySQL server has gone away")
        return await real(*args, **kw)

    monkeypatch.setattr(sup.store, "claim_next", flaky)
    run = asyncio.ensure_future(sup.run())
    for _ in range(40):
        await asyncio.sleep(0.002)
        clock.advance(1)
    assert runs[0] == 0 and not run.done()
    failing[0] = False
    await tick_until(clock, lambda: runs[0] >= 2, step_s=1)
    sup.request_stop()
    assert await asyncio.wait_for(run, 5) == exitcodes.OK


async def test_a_stuck_thread_keeps_its_lease_until_it_ends(sqlite: AsyncEngine) -> None:
    clock = FakeClock()
    release = threading.Event()
    calls = [0]

    def stuck(ctx: TaskContext) -> str:
        calls[0] += 1
        if calls[0] == 1:
            release.wait(30)  # ignores ctx.should_stop: a thread cannot be cancelled
        return "ok"

    sup = await make(sqlite, clock, {"stuck": (stuck, 1)}, max_lifetime=3600, grace_s=1)
    sup.registry.specs["stuck"] = dataclasses.replace(
        sup.registry.specs["stuck"], blocking=True, timeout_s=2
    )
    run = asyncio.ensure_future(sup.run())
    await tick_until(clock, lambda: bool(sup.stragglers), step_s=0.5, limit=2000)
    [state] = await sup.store.status()
    assert state.last_outcome == "timed_out" and "thread" in (state.last_error or "")
    assert state.running  # the lease is held: nobody may start it again meanwhile
    for _ in range(20):  # time passes, the task is due every second, but it must not start
        clock.advance(1)
        await asyncio.sleep(0.01)
    assert calls[0] == 1
    release.set()
    await tick_until(clock, lambda: calls[0] >= 2, step_s=0.5, limit=2000)
    assert not sup.stragglers
    sup.request_stop()
    assert await asyncio.wait_for(run, 10) == exitcodes.OK


async def test_an_idle_worker_sends_one_statement_per_poll(sqlite: AsyncEngine) -> None:
    """The probe, on its kept connection, and nothing else: no claim transaction when
    the probe says nothing is due (a worker polling 30 times a minute all day long)."""
    from sqlalchemy import event, update

    from cronloop.store.sql.tables import tasks

    async def t(ctx: TaskContext) -> None:
        pass

    clock = FakeClock()
    sup = await make(sqlite, clock, {"t": (t, 3600)}, poll_interval=2.0)
    async with sqlite.begin() as conn:
        await conn.execute(update(tasks).values(next_run=clock.now() + timedelta(days=1)))
    statements: list[str] = []
    event.listen(sqlite.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    run = asyncio.ensure_future(sup.run())
    # the first probe, and the housekeeping side loop's reap at start (on a loaded
    # machine it can land after the probe: counted, it failed this test in CI)
    await tick_until(
        clock,
        lambda: (
            any("min(" in s for s in statements)
            and any(s.startswith("UPDATE cronloop_run") for s in statements)
        ),
        step_s=0.1,
    )
    await asyncio.sleep(0.05)
    statements.clear()
    for _ in range(10):
        clock.advance(2.0)
        for _ in range(10):
            await asyncio.sleep(0.002)
    sup.request_stop()
    assert await asyncio.wait_for(run, 5) == exitcodes.OK
    probes = [s for s in statements if "min(" in s]
    assert len(probes) == 10 and len(statements) == 10, [s for s in statements if "min(" not in s]


async def test_runs_that_end_together_are_recorded_together(
    sqlite: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def t(ctx: TaskContext) -> None:
        pass

    clock = FakeClock()
    funcs: dict[str, tuple[Callable[..., Any], float]] = {f"t{i}": (t, 60) for i in range(20)}
    sup = await make(sqlite, clock, funcs, max_concurrency=20)
    real = sup.store.complete_many
    sizes: list[int] = []

    async def counting(ended: Any) -> list[bool]:
        sizes.append(len(ended))
        return await real(ended)

    monkeypatch.setattr(sup.store, "complete_many", counting)
    sup.once = True
    assert await asyncio.wait_for(sup.run(), 10) == exitcodes.OK
    assert sum(sizes) == 20 and len(sizes) <= 2, sizes
    assert all(s.runs == 1 for s in await sup.store.status())


async def test_a_conflicting_claim_is_retried_at_once_and_not_an_outage(
    sqlite: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pymysql.err
    from structlog.testing import capture_logs

    from cronloop.store.sql.errors import ErrorKind

    runs = [0]

    async def t(ctx: TaskContext) -> None:
        runs[0] += 1

    clock = FakeClock()
    sup = await make(sqlite, clock, {"t": (t, 60)})
    real = sup.store.claim_next
    conflicts = [2]

    async def racing(*args: Any, **kw: Any) -> Any:
        if conflicts[0]:
            conflicts[0] -= 1  # a Galera certification failure, as the driver raises it
            raise pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
        return await real(*args, **kw)

    monkeypatch.setattr(sup.store, "claim_next", racing)
    with capture_logs() as logs:
        run = asyncio.ensure_future(sup.run())
        await tick_until(clock, lambda: runs[0] == 1, step_s=0.001)
        sup.request_stop()
        assert await asyncio.wait_for(run, 5) == exitcodes.OK
    assert sup.health.counts[ErrorKind.CONFLICT] == 2 and sup.health.counts[ErrorKind.OUTAGE] == 0
    assert not [e for e in logs if e["log_level"] in ("error", "warning")], logs


async def test_a_bug_in_a_store_call_stops_the_worker_with_exit_70(
    sqlite: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def t(ctx: TaskContext) -> None:
        pass

    clock = FakeClock()
    sup = await make(sqlite, clock, {"t": (t, 60)})
    calls = [0]

    async def broken(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        raise TypeError("claim_next() got an unexpected keyword argument")

    monkeypatch.setattr(sup.store, "claim_next", broken)
    assert await asyncio.wait_for(sup.run(), 5) == exitcodes.SOFTWARE
    assert calls == [1]  # never retried


async def test_a_bug_while_recording_a_run_stops_the_worker_with_exit_70(
    sqlite: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def t(ctx: TaskContext) -> None:
        pass

    clock = FakeClock()
    sup = await make(sqlite, clock, {"t": (t, 60)})

    async def broken(ended: Any) -> list[bool]:
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(sup.store, "complete_many", broken)
    run = asyncio.ensure_future(sup.run())
    await tick_until(clock, run.done, step_s=0.25)
    assert run.result() == exitcodes.SOFTWARE


async def _due_at(engine: AsyncEngine, **due: Any) -> None:
    from sqlalchemy import update

    from cronloop.store.sql.tables import tasks

    async with engine.begin() as conn:
        for name, at in due.items():
            await conn.execute(update(tasks).where(tasks.c.name == name).values(next_run=at))


async def test_one_claim_takes_the_window_and_each_run_starts_at_its_own_time(
    sqlite: AsyncEngine,
) -> None:
    clock = FakeClock()
    t0 = clock.now()
    started: dict[str, Any] = {}

    def recording(name: str) -> Callable[..., Any]:
        async def task(ctx: TaskContext) -> None:
            started[name] = clock.now()

        return task

    sup = await make(sqlite, clock, {"a": (recording("a"), 600), "b": (recording("b"), 600)})
    await _due_at(sqlite, a=t0 + timedelta(seconds=1), b=t0 + timedelta(seconds=1.06))
    claims: list[int] = []
    real = sup.store.claim_next

    async def counting(*args: Any, **kwargs: Any) -> Any:
        batch = await real(*args, **kwargs)
        claims.append(len(batch.claims))
        return batch

    sup.store.claim_next = counting  # type: ignore[method-assign]
    run = asyncio.ensure_future(sup.run())
    await tick_until(clock, lambda: len(started) == 2, step_s=0.005)
    sup.request_stop()
    await asyncio.wait_for(run, 10)
    assert started["a"] >= t0 + timedelta(seconds=1)  # claimed ahead, never started early
    assert started["b"] >= t0 + timedelta(seconds=1.06)
    assert [n for n in claims if n] == [2]  # one claim for both


async def test_a_stop_gives_back_the_runs_claimed_ahead_unrun(sqlite: AsyncEngine) -> None:
    clock = FakeClock()
    t0 = clock.now()
    ran: list[str] = []

    async def task(ctx: TaskContext) -> None:
        ran.append("a")

    sup = await make(sqlite, clock, {"a": (task, 600)})
    await _due_at(sqlite, a=t0 + timedelta(seconds=1))
    sup.tasks.due.claim_s = 1.0  # as if claims were slow: the longest lead, so the run waits
    run = asyncio.ensure_future(sup.run())
    await tick_until(clock, lambda: len(sup.tasks.planned) == 1, step_s=0.001, limit=2000)
    sup.request_stop()
    assert await asyncio.wait_for(run, 10) == exitcodes.OK
    assert ran == []
    [state] = await sup.store.status()
    assert not state.running and state.next_run == t0 + timedelta(seconds=1)  # runs next time
    [entry] = await sup.store.history("a")
    assert entry.outcome == "skipped" and entry.error == "released unrun"
