"""Recording how runs ended: group commit, the fenced retry through an outage, and rows
the database refuses (issue 10 item 1), on SQLite and on real MariaDB."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop import exitcodes
from cronloop.config.settings import Settings
from cronloop.definitions.context import TaskContext
from cronloop.definitions.registry import Registry, TaskSpec
from cronloop.domain.clock import FakeClock
from cronloop.domain.outcome import Outcome
from cronloop.domain.records import Claim, RunRecord
from cronloop.domain.schedule import Every
from cronloop.runtime.dbhealth import DbHealth
from cronloop.runtime.recording import Recorder, Written, placeholder_record
from cronloop.runtime.runner import RunEnvironment
from cronloop.runtime.supervisor import Supervisor
from cronloop.store.sql.claims import TaskDeclaration, TaskStore
from cronloop.store.sql.engine import session_factory
from cronloop.store.sql.errors import ErrorKind, classify

Funcs = dict[str, Callable[..., Any]]


async def supervisor(engine: AsyncEngine, clock: FakeClock, funcs: Funcs) -> Supervisor:
    specs = {
        name: TaskSpec(name=name, func=f, schedule=Every(timedelta(seconds=60)), timeout_s=60)
        for name, f in funcs.items()
    }
    store = TaskStore(engine, worker_id="w")
    await store.sync_tasks(
        TaskDeclaration(n, s.schedule_text, 60, clock.now()) for n, s in specs.items()
    )
    config = Settings(max_lifetime=0, lifetime_jitter_s=0, poll_interval=1.0, max_concurrency=20)
    env = RunEnvironment(store=store, settings=config, clock=clock, db=session_factory(engine))
    sup = Supervisor(Registry(specs), env, once=True)
    return sup


def returning(value: str) -> Callable[..., Any]:
    async def task(ctx: TaskContext) -> str:
        return value

    return task


def raising(text: str) -> Callable[..., Any]:
    async def task(ctx: TaskContext) -> None:
        raise RuntimeError(text)

    return task


@pytest.mark.parametrize(
    ("bad", "shown"),
    [
        pytest.param(returning("x" * 70_000), "truncated: 70000 characters", id="70000-characters"),
        pytest.param(returning("ls: caf\udce9.txt"), "caf\\udce9", id="lone-surrogate-message"),
        pytest.param(raising("bad name \udcff"), "name \\udcff", id="lone-surrogate-error"),
    ],
)
async def test_text_no_database_stores_is_bounded_before_it_is_recorded(
    engine: AsyncEngine, bad: Callable[..., Any], shown: str
) -> None:
    """70,000 characters (MariaDB: 1406 data too long) and lone surrogates (both: cannot be
    encoded) used to be refused; the runner's text boundary now cuts the first with a
    visible marker and escapes the second, so the run lands with its text and its batch
    with it, and `--once` ends."""
    funcs: Funcs = {f"ok{i}": returning(f"fine {i}") for i in range(5)}
    funcs["bad"] = bad
    sup = await supervisor(engine, FakeClock(), funcs)
    assert await asyncio.wait_for(sup.run(), 20) == exitcodes.OK
    states = {s.name: s for s in await sup.store.status()}
    assert not any(s.running for s in states.values()), states
    for i in range(5):
        assert states[f"ok{i}"].last_message == f"fine {i}"
    recorded = states["bad"]
    assert recorded.runs == 1 and recorded.next_run is not None
    text = recorded.last_message or recorded.last_error or ""
    assert shown in text, text[-200:]
    [entry] = await sup.store.history("bad")
    assert entry.outcome != "running" and shown in (entry.message or entry.error or "")
    assert not sup.health.down and sup.health.counts[ErrorKind.OUTAGE] == 0
    assert sup.health.counts[ErrorKind.REFUSED] == 0


async def test_a_record_the_database_refuses_lands_with_a_placeholder(rig: Rig) -> None:
    """Past the runner's boundary (a store's caller writing what it likes), a row the
    database refuses (MariaDB: 70,000 characters; both: a lone surrogate) is recorded alone
    with a placeholder naming what was refused; the others of its batch land."""
    claims = await rig.claims(3)
    long_text = "x" * 70_000
    texts = ["ok", "caf\udce9", long_text]
    results = await asyncio.gather(
        *(rig.recorder.complete(c, rig.record(c, m)) for c, m in zip(claims, texts, strict=True))
    )
    mariadb = rig.store.engine.dialect.name != "sqlite"
    expected = [Written.WRITTEN, Written.PLACEHOLDER]
    expected.append(Written.PLACEHOLDER if mariadb else Written.WRITTEN)
    assert results == expected
    states = {s.name: s for s in await rig.store.status()}
    assert states["t0"].last_message == "ok"
    placeholder = states["t1"].last_message or ""
    assert "database refused" in placeholder and "characters" in placeholder
    assert placeholder.isascii() and len(placeholder) <= 500
    kept = states["t2"].last_message or ""
    assert "database refused" in kept if mariadb else kept == long_text
    assert rig.health.counts[ErrorKind.REFUSED] >= 1 and not rig.health.down


async def test_a_user_name_longer_than_its_column_does_not_stop_recording(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`last_user` is 64 wide: a longer USER used to make MariaDB refuse every run."""
    long_user = "u" * 80
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, long_user)
    sup = await supervisor(engine, FakeClock(), {"t": returning("done")})
    assert await asyncio.wait_for(sup.run(), 20) == exitcodes.OK
    [state] = await sup.store.status()
    assert state.last_message == "done" and not state.running
    assert state.last_user is not None and long_user.startswith(state.last_user)


# -- the recorder on its own (SQLite; failures injected into the real store) ---------------


class Rig:
    def __init__(self, store: TaskStore, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock
        self.health = DbHealth(clock, lambda: 5.0, classify)
        self.recorder = Recorder(store, self.health)

    async def claims(self, n: int) -> list[Claim]:
        names = [f"t{i}" for i in range(n)]
        await self.store.sync_tasks(
            TaskDeclaration(name, "every 60s", 60, self.clock.now()) for name in names
        )
        return await self.store.claim_due(self.clock.now(), n, names=names)

    def record(self, claim: Claim, message: str | None = "ok") -> RunRecord:
        now = self.clock.now()
        return RunRecord(
            outcome=Outcome.SUCCESS,
            started=claim.scheduled_for,
            ended=now,
            duration_s=0.1,
            next_run=now + timedelta(seconds=60),
            planned_run=claim.scheduled_for + timedelta(seconds=60),
            message=message,
        )


@pytest.fixture
async def rig(engine: AsyncEngine) -> Rig:
    return Rig(TaskStore(engine, worker_id="w"), FakeClock())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_runs_that_end_in_one_turn_share_one_transaction(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = await rig.claims(30)
    sizes = spy(rig.store, monkeypatch)
    results = await asyncio.gather(*(rig.recorder.complete(c, rig.record(c)) for c in claims))
    assert results == [Written.WRITTEN] * 30 and sizes == [30]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_failed_flush_is_retried_until_it_lands_and_a_lost_lease_is_said(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = await rig.claims(2)
    real = rig.store.complete_many
    outages = [3]

    async def flaky(ended: Any) -> list[bool]:
        if outages[0]:
            outages[0] -= 1
            raise ConnectionResetError("Lost connection to MySQL server during query")
        return await real(ended)

    monkeypatch.setattr(rig.store, "complete_many", flaky)
    # the second run's lease is no longer its own: its fenced write must not land
    lost = dataclasses.replace(claims[1], token="not-the-token")
    pending = asyncio.gather(
        rig.recorder.complete(claims[0], rig.record(claims[0])),
        rig.recorder.complete(lost, rig.record(lost)),
    )
    for _ in range(200):
        if pending.done():
            break
        await asyncio.sleep(0.001)
        rig.clock.advance(0.25)
    assert await asyncio.wait_for(pending, 5) == [Written.WRITTEN, Written.LEASE_LOST]
    assert outages == [0] and rig.health.counts[ErrorKind.OUTAGE] == 3
    assert not rig.health.down  # reachable again once the write landed


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_refused_run_is_split_out_and_the_rest_lands_in_few_transactions(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = await rig.claims(16)
    sizes = spy(rig.store, monkeypatch)
    messages = ["ok"] * 16
    messages[11] = "caf\udce9"
    results = await asyncio.gather(
        *(rig.recorder.complete(c, rig.record(c, m)) for c, m in zip(claims, messages, strict=True))
    )
    assert results == [Written.WRITTEN] * 11 + [Written.PLACEHOLDER] + [Written.WRITTEN] * 4
    assert len(sizes) <= 2 * 4 + 2, sizes  # halving: a few transactions, not one per run
    states = {s.name: s for s in await rig.store.status()}
    assert "refused" in (states["t11"].last_message or "")
    assert all(s.last_message == "ok" for n, s in states.items() if n != "t11")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_bug_in_recording_is_raised_not_retried(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    [claim] = await rig.claims(1)
    calls = [0]

    async def broken(ended: Any) -> list[bool]:
        calls[0] += 1
        raise TypeError("unsupported operand")

    monkeypatch.setattr(rig.store, "complete_many", broken)
    with pytest.raises(TypeError):
        await asyncio.wait_for(rig.recorder.complete(claim, rig.record(claim)), 5)
    assert calls == [1] and rig.health.counts[ErrorKind.BUG] == 1 and not rig.health.down


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_an_aborted_run_gives_up_retrying_through_an_outage(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    [claim] = await rig.claims(1)

    async def down(ended: Any) -> list[bool]:
        raise ConnectionRefusedError("Can't connect to MySQL server")

    monkeypatch.setattr(rig.store, "complete_many", down)
    aborted = [False]
    pending = asyncio.ensure_future(
        rig.recorder.complete(claim, rig.record(claim), give_up=lambda: aborted[0])
    )
    for _ in range(20):
        await asyncio.sleep(0.001)
        rig.clock.advance(0.5)
    assert not pending.done() and rig.health.down
    aborted[0] = True
    rig.clock.advance(1)
    assert await asyncio.wait_for(pending, 5) is Written.GAVE_UP


def test_the_placeholder_names_what_was_refused() -> None:
    record = RunRecord(
        outcome=Outcome.FAILED,
        started=FakeClock().now(),
        ended=FakeClock().now(),
        duration_s=1.0,
        next_run=None,
        planned_run=None,
        message=None,
        error="é" * 100_000,
    )
    refusal = UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")
    out = placeholder_record(record, refusal)
    assert out.message is None and out.error is not None
    assert "error of 100000 characters" in out.error and "UnicodeEncodeError" in out.error
    assert out.error.isascii() and len(out.error) <= 500
    assert out.outcome == record.outcome and out.duration_s == record.duration_s


def spy(store: TaskStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each `complete_many` call (each one transaction or more)."""
    real = store.complete_many
    sizes: list[int] = []

    async def counting(ended: Any) -> list[bool]:
        sizes.append(len(ended))
        return await real(ended)

    monkeypatch.setattr(store, "complete_many", counting)
    return sizes


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_steady_stream_of_ends_shares_a_window_and_a_lone_run_does_not_wait(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.recorder = Recorder(rig.store, rig.health, window_s=1.0, eager_at=lambda: 100)
    lone, *stream = await rig.claims(4)
    sizes = spy(rig.store, monkeypatch)
    # the first end in a while is recorded at once: bounded far below the window
    assert await asyncio.wait_for(rig.recorder.complete(lone, rig.record(lone)), 0.5) == (
        Written.WRITTEN
    )
    pending = []
    for claim in stream:  # each ends in a turn of the loop of its own, right after
        pending.append(asyncio.ensure_future(rig.recorder.complete(claim, rig.record(claim))))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    assert await asyncio.wait_for(asyncio.gather(*pending), 5) == [Written.WRITTEN] * 3
    assert sizes == [1, 3]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_enough_queued_ends_cut_the_window_short(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full worker must not wait a window for a slot: half the slots queued flush now."""
    rig.recorder = Recorder(rig.store, rig.health, window_s=60.0, eager_at=lambda: 2)
    first, *rest = await rig.claims(3)
    sizes = spy(rig.store, monkeypatch)
    await rig.recorder.complete(first, rig.record(first))
    pending = [asyncio.ensure_future(rig.recorder.complete(c, rig.record(c))) for c in rest]
    # a 60 s window would time this out: the second queued end flushes both
    assert await asyncio.wait_for(asyncio.gather(*pending), 5) == [Written.WRITTEN] * 2
    assert sizes == [1, 2]
