"""The lease keeper, the one owner of lease validity, on a real SQLite store and a fake
clock: renewals confirm leases, a lost lease stops its run, renewals that keep failing
stop a run before its lease can expire, and a run being recorded is left alone."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine
from structlog.testing import capture_logs

from cronloop.config.settings import Settings
from cronloop.definitions.context import StopReason
from cronloop.domain.clock import FakeClock
from cronloop.domain.records import Claim
from cronloop.runtime.dbhealth import DbHealth
from cronloop.runtime.leases import Lease, LeaseKeeper
from cronloop.store.sql.claims import TaskDeclaration, TaskStore
from cronloop.store.sql.engine import create_engine
from cronloop.store.sql.errors import ErrorKind, classify
from cronloop.store.sql.migrate import upgrade
from cronloop.store.sql.tables import tasks

LEASE_S = 30.0


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'l.db'}"))
    await upgrade(engine)
    yield engine
    await engine.dispose()


class Rig:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.clock = FakeClock()
        self.store = TaskStore(engine, worker_id="w", lease_s=LEASE_S)
        self.health = DbHealth(self.clock, lambda: 5.0, classify)
        self.keeper = LeaseKeeper(self.store, self.clock, LEASE_S, self.health)
        self.stopped: dict[str, StopReason] = {}

    async def lease(self, name: str) -> Lease:
        await self.store.sync_tasks([TaskDeclaration(name, "every 60s", 60, self.clock.now())])
        [claim] = await self.store.claim_due(self.clock.now(), 1, names=[name])
        lease = self.keeper.track(claim, self.clock.monotonic())
        lease.attach(lambda reason: self.stopped.setdefault(name, reason), _Log())
        return lease


class _Log:
    def __getattr__(self, level: str) -> Any:
        return lambda *a, **kw: None


@pytest.fixture
def rig(sqlite: AsyncEngine) -> Rig:
    return Rig(sqlite)


async def test_a_renewal_confirms_the_lease_from_when_it_was_sent(rig: Rig) -> None:
    lease = await rig.lease("a")
    assert lease.valid_until() == rig.clock.monotonic() + LEASE_S * 2 / 3
    rig.clock.advance(10)
    sent = rig.clock.monotonic()
    await rig.keeper.renew()
    assert lease.valid_until() == sent + LEASE_S * 2 / 3 and not rig.stopped


async def test_a_lost_lease_stops_its_run_and_says_so(rig: Rig) -> None:
    lease = await rig.lease("a")
    other = await rig.lease("b")
    async with rig.engine.begin() as conn:  # another worker took "a" over
        await conn.execute(update(tasks).where(tasks.c.name == "a").values(lease_token="theirs"))
    await rig.keeper.renew()
    assert rig.stopped == {"a": StopReason.LEASE_LOST}
    assert rig.clock.monotonic() >= lease.valid_until()  # its checkpoints stop it too
    assert other.valid_until() > rig.clock.monotonic()


async def test_a_run_being_recorded_is_not_stopped_for_its_own_cleared_token(rig: Rig) -> None:
    lease = await rig.lease("a")
    lease.recording(True)
    async with rig.engine.begin() as conn:  # its own write cleared the token
        await conn.execute(update(tasks).values(lease_token=None))
    await rig.keeper.renew()
    assert rig.stopped == {}


async def test_failing_renewals_stop_a_run_before_its_lease_can_expire(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await rig.lease("a")
    ending = await rig.lease("b")
    ending.recording(True)  # its fenced write is retried until it lands: not stopped

    async def down(claims: Any) -> set[str]:
        raise ConnectionResetError("Lost connection to MySQL server during query")

    monkeypatch.setattr(rig.store, "renew", down)
    with capture_logs() as logs:
        for _ in range(2):  # 10 s, 20 s: a third of the lease still left at 10 s
            rig.clock.advance(LEASE_S / 3 - 0.001)
            await rig.keeper.renew()
        assert rig.stopped == {}
        rig.clock.advance(0.01)
        await rig.keeper.renew()
    assert rig.stopped == {"a": StopReason.LEASE_LOST}
    assert rig.clock.monotonic() >= running.valid_until()
    assert rig.health.down and rig.health.counts[ErrorKind.OUTAGE] == 3
    outage_lines = [e for e in logs if e["event"].startswith("database unreachable")]
    assert len(outage_lines) == 1  # one line for the outage, not one per round


async def test_a_conflicting_renewal_is_retried_at_once(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pymysql.err

    lease = await rig.lease("a")
    real = rig.store.renew
    conflicts = [2]

    async def racing(claims: Any) -> set[str]:
        if conflicts[0]:
            conflicts[0] -= 1
            raise pymysql.err.OperationalError(1213, "Deadlock found when trying to get lock")
        return await real(claims)

    monkeypatch.setattr(rig.store, "renew", racing)
    rig.clock.advance(10)
    sent = rig.clock.monotonic()
    renewing = asyncio.ensure_future(rig.keeper.renew())
    for _ in range(100):
        if renewing.done():
            break
        await asyncio.sleep(0)
        rig.clock.advance(0.001)
    await asyncio.wait_for(renewing, 5)
    assert conflicts == [0] and rig.health.counts[ErrorKind.CONFLICT] == 2
    assert not rig.health.down and not rig.stopped
    assert lease.valid_until() == sent + LEASE_S * 2 / 3


async def test_a_forgotten_lease_is_renewed_no_more(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    lease = await rig.lease("a")
    rig.keeper.forget(lease.claim)
    renewed: list[list[Claim]] = []

    async def spy(claims: Any) -> set[str]:
        renewed.append(list(claims))
        return set()

    monkeypatch.setattr(rig.store, "renew", spy)
    await rig.keeper.renew()
    assert renewed == []  # nothing tracked: no statement at all
    again = rig.keeper.track(dataclasses.replace(lease.claim), rig.clock.monotonic())
    await rig.keeper.renew()
    assert [c.run_id for c in renewed[0]] == [again.claim.run_id]
