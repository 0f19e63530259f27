"""SIGHUP on a running worker: settings reported as applied are used by the next runs
(the retry policy, the thread pool's size), not frozen at start-up."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
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
from cronloop.store.sql.tables import tasks


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"))
    await upgrade(engine)
    yield engine
    await engine.dispose()


async def worker(
    engine: AsyncEngine, clock: FakeClock, specs: dict[str, TaskSpec], settings: Settings
) -> tuple[Supervisor, list[Settings]]:
    """A supervisor whose reloader hands over the next settings of a list."""
    store = TaskStore(engine, worker_id="w")
    await store.sync_tasks(
        TaskDeclaration(n, s.schedule_text, s.timeout_s, clock.now()) for n, s in specs.items()
    )
    env = RunEnvironment(store=store, settings=settings, clock=clock, db=session_factory(engine))
    pending: list[Settings] = []
    registry = Registry(specs)

    async def reloader(current: Settings) -> tuple[Settings, Registry] | None:
        return pending.pop(0), registry

    return Supervisor(registry, env, reloader=reloader), pending


def base(**kw: Any) -> Settings:
    return Settings(max_lifetime=0, lifetime_jitter_s=0, poll_interval=1.0, **kw)


async def until(clock: FakeClock, done: Callable[[], bool], step_s: float = 0.25) -> None:
    for _ in range(800):
        if done():
            return
        await asyncio.sleep(0.005)
        clock.advance(step_s)
    raise AssertionError("condition not reached")


async def test_retry_settings_apply_to_the_next_failure(sqlite: AsyncEngine) -> None:
    clock = FakeClock()
    failures: list[float] = []

    async def flaky(ctx: TaskContext) -> None:
        failures.append(clock.monotonic())
        raise RuntimeError("upstream down")

    spec = TaskSpec(name="flaky", func=flaky, schedule=Every(timedelta(hours=1)), timeout_s=60)
    sup, pending = await worker(sqlite, clock, {"flaky": spec}, base(retry_max=0))
    run = asyncio.ensure_future(sup.run())
    await until(clock, lambda: len(failures) == 1)
    await until(clock, lambda: not sup.runners)
    [state] = await sup.store.status()
    first_next = state.next_run
    assert first_next is not None and first_next - state.latest_run_start >= timedelta(minutes=59)

    pending.append(base(retry_max=3, retry_delay_s=5))
    sup.control._on_hangup()  # what SIGHUP does
    await sup.store.trigger("flaky", clock.now())
    await until(clock, lambda: len(failures) == 2)
    await until(clock, lambda: not sup.runners)
    [state] = await sup.store.status()
    assert state.next_run is not None and state.latest_run_end is not None
    retry_in = (state.next_run - state.latest_run_end).total_seconds()
    # retried after retry_delay_s (doubling per failure in a row), not after the hour
    assert retry_in == pytest.approx(5 * 2 ** (state.consecutive_failures - 1), abs=0.5)
    await until(clock, lambda: len(failures) == 3)  # and it did run again then
    sup.request_stop()
    assert await asyncio.wait_for(run, 10) == exitcodes.OK


async def test_max_concurrency_resizes_the_thread_pool_of_blocking_tasks(
    sqlite: AsyncEngine,
) -> None:
    """Three blocking runs that must meet: impossible with one thread, which the pool
    kept at its start-up size while `max_concurrency` changed live."""
    clock = FakeClock()
    meet = threading.Barrier(3, timeout=10)
    met: list[str] = []

    def together(ctx: TaskContext) -> None:
        meet.wait()
        met.append(ctx.task_name)

    specs = {
        n: TaskSpec(
            name=n, func=together, schedule=Every(timedelta(hours=1)), timeout_s=60, blocking=True
        )
        for n in ("a", "b", "c")
    }
    for name in specs:
        specs[name] = dataclasses.replace(specs[name], name=name)
    sup, pending = await worker(sqlite, clock, specs, base(max_concurrency=1))
    async with sqlite.begin() as conn:  # nothing due until the reload
        await conn.execute(update(tasks).values(next_run=clock.now() + timedelta(days=1)))
    run = asyncio.ensure_future(sup.run())
    await until(clock, lambda: sup.tasks.due.learned_mono is not None)
    pending.append(base(max_concurrency=3))
    sup.control._on_hangup()
    for name in specs:
        await sup.store.trigger(name, clock.now())
    await until(clock, lambda: len(met) == 3, step_s=0.05)
    sup.request_stop()
    assert await asyncio.wait_for(run, 10) == exitcodes.OK
    assert sorted(met) == ["a", "b", "c"]
    assert all(s.last_outcome == "success" for s in await sup.store.status())
    sup.env.close()
