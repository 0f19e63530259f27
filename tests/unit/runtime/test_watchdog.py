"""The loop watchdog with an injected clock and exit: no threads, no sleeps, no dying.

The strike/quarantine SQL runs on a real SQLite database and on MariaDB (through the
`settings` fixture's URL), because a dying process gets one chance to write it.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from sqlalchemy import select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop.config.settings import Settings
from cronloop.domain.outcome import TaskStatus
from cronloop.runtime.watchdog import (
    LoopWatchdog,
    format_stacks,
    run_bounded,
    strike_recorder,
    strike_tasks_sync,
)
from cronloop.store.sql.claims import TaskDeclaration, TaskStore
from cronloop.store.sql.store import short_lived_store
from cronloop.store.sql.tables import tasks


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class Harness:
    """A watchdog whose time, exit and stall callback are all recorded."""

    def __init__(
        self,
        watchdog_s: float = 10.0,
        running: list[str] | None = None,
        on_stall: Any = None,
        **kw: Any,
    ) -> None:
        self.clock = Clock()
        self.exits: list[int] = []
        self.stalls: list[tuple[list[str], float]] = []
        self.running = running if running is not None else ["alpha", "beta"]
        # faulthandler needs a real descriptor; the file lives as long as the harness
        self.dump = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.dog = LoopWatchdog(
            watchdog_s,
            running_tasks=lambda: self.running,
            on_stall=on_stall or (lambda names, s: self.stalls.append((names, s))),
            clock=self.clock,
            exit_fn=self.exits.append,
            dump_file=self.dump,
            **kw,
        )

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """Move time as the checking thread would see it: a check every `step`."""
        end = self.clock.t + seconds
        while self.clock.t < end - 1e-9:
            self.clock.t = min(end, self.clock.t + step)
            self.dog.check()

    def dumped(self) -> str:
        self.dump.seek(0)
        return self.dump.read()


@pytest.fixture
def logged() -> Iterator[list[MutableMapping[str, Any]]]:
    with structlog.testing.capture_logs() as events:
        yield events


def test_stall_is_detected_after_watchdog_s_and_not_before() -> None:
    h = Harness(watchdog_s=10.0)
    h.dog.heartbeat()
    h.advance(9.5)
    assert h.exits == []
    h.advance(0.5)
    assert h.exits == [70]
    assert h.stalls and h.stalls[0][1] == pytest.approx(10.0)


def test_heartbeats_keep_it_quiet() -> None:
    h = Harness(watchdog_s=10.0)
    for _ in range(40):  # 100 s of a healthy loop beating every 2.5 s
        h.dog.heartbeat()
        h.advance(h.dog.interval_s)
    assert h.exits == [] and h.stalls == []


def test_fires_once_only() -> None:
    h = Harness(watchdog_s=2.0)
    h.advance(10.0)
    assert h.exits == [70] and len(h.stalls) == 1


def test_stacks_are_dumped_and_logged_with_the_running_tasks(
    logged: list[MutableMapping[str, Any]],
) -> None:
    h = Harness(watchdog_s=1.0, running=["slow_one", "other"])
    h.advance(1.0)
    assert "most recent call first" in h.dumped()  # faulthandler's all-thread dump
    assert "test_watchdog.py" in h.dumped()
    (event,) = [e for e in logged if e["event"].startswith("event loop blocked")]
    assert event["log_level"] == "error"
    assert event["running_tasks"] == ["other", "slow_one"]
    assert "test_stacks_are_dumped" in event["stacks"]  # this very frame, as text
    assert f"Thread {threading.current_thread().name}" in event["stacks"]


def test_callback_gets_the_running_task_names() -> None:
    h = Harness(watchdog_s=1.0, running=["b", "a", "b"])
    h.advance(1.0)
    [(names, stalled_s)] = h.stalls
    assert names == ["a", "b"] and stalled_s == pytest.approx(1.0)


def test_no_running_task_means_no_strike_but_still_exit() -> None:
    h = Harness(watchdog_s=1.0, running=[])
    h.advance(1.0)
    assert h.stalls == [] and h.exits == [70]


def test_the_culprit_is_the_task_whose_code_is_on_the_loop_stack() -> None:
    def guilty() -> None: ...

    def innocent() -> None: ...

    codes = {"guilty": guilty.__code__, "innocent": innocent.__code__}
    h = Harness(watchdog_s=1.0, running=["guilty", "innocent"], code_of=codes.get)
    frame = sys._getframe()

    class FakeFrame:  # the loop thread's stack: guilty() called from here
        f_code = guilty.__code__
        f_back = frame

    assert h.dog.culprits(["guilty", "innocent"], FakeFrame()) == ["guilty"]  # type: ignore[arg-type]
    # nothing of theirs on the stack: every running task gets the strike
    assert h.dog.culprits(["guilty", "innocent"], frame) == ["guilty", "innocent"]


def test_a_failing_strike_write_still_exits(logged: list[MutableMapping[str, Any]]) -> None:
    def broken(names: list[str], stalled_s: float) -> None:
        raise ConnectionError("database gone")

    h = Harness(watchdog_s=1.0, on_stall=broken)
    h.advance(1.0)
    assert h.exits == [70]
    assert any(
        "failed; exiting anyway" in e["event"] and "database gone" in e["error"] for e in logged
    )


def test_a_hanging_strike_write_does_not_hold_the_exit(
    logged: list[MutableMapping[str, Any]],
) -> None:
    release = threading.Event()
    h = Harness(watchdog_s=1.0, on_stall=lambda names, s: release.wait(5), strike_timeout_s=0.05)
    started = time.monotonic()
    h.advance(1.0)
    release.set()
    assert h.exits == [70]
    assert time.monotonic() - started < 1.0
    assert any("took longer than" in e["event"] for e in logged)


def test_a_broken_running_tasks_callback_still_exits() -> None:
    h = Harness(watchdog_s=1.0)
    h.dog.running_tasks = lambda: [][1]
    h.advance(1.0)
    assert h.exits == [70] and h.stalls == []


def test_a_suspended_process_is_not_a_blocked_loop() -> None:
    """SIGSTOP/SIGCONT or a VM pause: the checking thread did not run either."""
    h = Harness(watchdog_s=10.0)
    h.dog.heartbeat()
    h.dog.check()
    h.clock.t += 60  # nothing ran for a minute, the thread included
    assert h.dog.check() is False
    h.advance(9.5)
    assert h.exits == []
    h.advance(0.5)  # but a loop that stays stuck after the pause is caught
    assert h.exits == [70]


def test_run_bounded_reports_success() -> None:
    assert run_bounded(lambda: None, 1.0, "nothing") is True


def test_format_stacks_truncates() -> None:
    frame = sys._getframe()
    text = format_stacks({i: frame for i in range(1000)})
    assert len(text) < 21_000 and text.endswith("see the faulthandler dump)")


async def test_beat_coroutine_keeps_the_heartbeat_fresh() -> None:
    clock = Clock()
    dog = LoopWatchdog(0.04, running_tasks=list, clock=clock, exit_fn=lambda code: None)
    beating = asyncio.ensure_future(dog.beat())
    await asyncio.sleep(0)
    clock.t += 5
    await asyncio.sleep(0.03)  # > interval_s = 0.01: the loop beat again
    beating.cancel()
    assert dog.check() is False


def test_real_thread_fires_on_a_blocked_loop() -> None:
    """The thread, the real clock: a loop that beats is left alone; a loop blocked by a
    synchronous wait is caught (the wait ends as soon as the watchdog has fired)."""
    exited = threading.Event()
    codes: list[int] = []

    def fake_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    async def main() -> float:
        dog = LoopWatchdog(
            0.04,
            running_tasks=lambda: ["sleeper"],
            exit_fn=fake_exit,
            dump_file=tempfile.TemporaryFile("w+"),  # noqa: SIM115 - one test
        )
        dog.start()
        beating = asyncio.ensure_future(dog.beat())
        await asyncio.sleep(0.1)  # more than two windows of a healthy loop
        assert not exited.is_set()
        blocked_at = time.monotonic()
        exited.wait(5)  # the blocking call: nothing else runs on the loop meanwhile
        blocked_s = time.monotonic() - blocked_at
        beating.cancel()
        dog.stop()
        return blocked_s

    with structlog.testing.capture_logs():
        blocked_s = asyncio.run(main())
    assert codes == [70]
    assert 0.02 <= blocked_s < 2.0  # a window after the last beat (one interval before)


# -- strikes and quarantine on a real database -------------------------------------------


async def _row(engine: AsyncEngine, name: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(tasks).where(tasks.c.name == name))).one()


async def test_strikes_then_quarantine(engine: AsyncEngine, settings: Settings) -> None:
    store = TaskStore(engine)
    await store.sync_tasks(
        [TaskDeclaration(n, "every 1s", 10, None) for n in ("hog", "ok", "held")]
    )
    await store.pause("held")
    url = functools.partial(short_lived_store, engine.url)
    run = asyncio.get_running_loop().run_in_executor  # sync I/O off this test's loop
    assert (
        await run(
            None, strike_tasks_sync, url, ["hog", "held"], "blocked the event loop for 31 s", 2
        )
        == []
    )
    assert (await _row(engine, "hog")).status == TaskStatus.ACTIVE
    quarantined = await run(
        None, strike_tasks_sync, url, ["hog", "held"], "blocked the event loop for 31 s", 2
    )
    assert quarantined == ["hog"]
    hog, ok, held = [await _row(engine, n) for n in ("hog", "ok", "held")]
    assert (hog.status, hog.strikes) == (TaskStatus.QUARANTINED, 2)
    assert hog.status_reason.startswith("blocked the event loop for 31 s, 2 strikes")
    assert (ok.strikes, ok.status) == (0, TaskStatus.ACTIVE)
    assert (held.strikes, held.status) == (2, TaskStatus.PAUSED)  # the operator's pause stays
    states = {s.name: s for s in await store.status()}
    assert states["hog"].status_reason == hog.status_reason  # what `cronloop status` shows
    assert await store.claim_due(hog.next_run or hog.updated, 10, ["hog"]) == []
    await store.resume("hog")
    hog = await _row(engine, "hog")
    assert (hog.status, hog.strikes) == (TaskStatus.ACTIVE, 0)


async def test_strike_recorder_logs_and_quarantines(engine: AsyncEngine) -> None:
    store = TaskStore(engine)
    await store.sync_tasks([TaskDeclaration("hog", "every 1s", 10, None)])
    async with engine.begin() as conn:
        await conn.execute(update(tasks).values(strikes=4))
    record = strike_recorder(functools.partial(short_lived_store, engine.url), quarantine_strikes=5)
    with structlog.testing.capture_logs() as events:
        await asyncio.get_running_loop().run_in_executor(None, record, ["hog"], 31.4)
    assert (await _row(engine, "hog")).status_reason.startswith(
        "blocked the event loop for 31 s, 5 strikes"
    )
    assert events[-1]["quarantined"] == ["hog"]


def test_unreachable_database_fails_fast_without_leaking_the_password() -> None:
    url = make_url("mysql+aiomysql://nobody:s3cr3t@127.0.0.1:1/none")  # port 1: refused
    started = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)connect") as caught:
        strike_tasks_sync(functools.partial(short_lived_store, url, 1.0), ["x"], "blocked", 2)
    assert time.monotonic() - started < 3.0
    assert "s3cr3t" not in str(caught.value)
