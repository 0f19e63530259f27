"""What the runner tells a `RunEvents` observer (the metrics): each run's lateness when it
starts, its outcome and duration when it ends; and the lease keeper's count of lost leases."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop.definitions.context import TaskContext
from cronloop.domain.clock import FakeClock
from cronloop.domain.outcome import Outcome
from cronloop.runtime.leases import LeaseKeeper
from tests.unit.runtime.test_runner import Harness, sqlite  # noqa: F401  (a fixture)


class Heard:
    def __init__(self) -> None:
        self.started: list[tuple[str, float]] = []
        self.ended: list[tuple[str, Outcome, float]] = []

    def run_started(self, task: str, lateness_s: float) -> None:
        self.started.append((task, lateness_s))

    def run_ended(self, task: str, outcome: Outcome, duration_s: float) -> None:
        self.ended.append((task, outcome, duration_s))


@pytest.fixture
async def h(sqlite: AsyncEngine) -> AsyncIterator[Harness]:  # noqa: F811
    harness = Harness(sqlite, FakeClock())
    yield harness
    harness.executor.shutdown(wait=False, cancel_futures=True)


async def test_the_runner_reports_lateness_outcome_and_duration(h: Harness) -> None:
    heard = Heard()
    h.env.events = heard

    async def slow(ctx: TaskContext) -> None:
        while h.clock.monotonic() < started + 3:
            await ctx.checkpoint()
            await h.clock.sleep(0.5)

    async def boom(ctx: TaskContext) -> None:
        raise RuntimeError("no")

    runner = await h.runner(slow)
    h.clock.advance(0.25)  # due 250 ms ago when it starts
    started = h.clock.monotonic()
    assert await h.drive(runner) == Outcome.SUCCESS
    assert await h.drive(await h.runner(boom)) == Outcome.FAILED
    assert heard.started[0] == ("slow", pytest.approx(0.25))
    assert [(name, outcome) for name, outcome, _ in heard.ended] == [
        ("slow", Outcome.SUCCESS),
        ("boom", Outcome.FAILED),
    ]
    assert heard.ended[0][2] >= 3.0


async def test_a_lost_lease_is_counted_once(h: Harness) -> None:
    keeper = LeaseKeeper(h.store, h.clock, 6.0, h.env.health)

    async def hangs(ctx: TaskContext) -> None:
        while True:
            await ctx.checkpoint()
            await h.clock.sleep(0.5)

    runner = await h.runner(hangs, keeper=keeper)
    await h.store.free_lease(runner.claim)  # as if another worker had taken it over
    await keeper.renew()
    await keeper.renew()
    assert keeper.lost_total == 1
    assert await h.drive(runner) == Outcome.ABANDONED
