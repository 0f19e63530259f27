"""The lease-row migration lock (`cronloop_lock`), on SQLite and MariaDB.

Its clock is the database's; the tests never wait for a lease to run out: a lease taken
with a negative length is expired from the start.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cronloop.store.sql.migrate_lock import LeaseLock, LockTimeout
from cronloop.store.sql.tables import locks


async def test_one_holder_at_a_time_then_the_next(engine: AsyncEngine) -> None:
    a, b = LeaseLock(engine, "t"), LeaseLock(engine, "t")
    await a.ensure_table()
    assert await a.try_acquire()
    assert not await b.try_acquire()
    assert await a.renew()
    await a.release()
    assert await b.try_acquire()
    assert not await a.try_acquire()


async def test_an_expired_lease_is_taken_over_and_its_holder_knows(engine: AsyncEngine) -> None:
    a, b = LeaseLock(engine, "t", lease_s=-1.0), LeaseLock(engine, "t")
    await a.ensure_table()
    assert await a.try_acquire()  # expired at once
    assert await b.try_acquire()
    assert not await a.renew()
    await a.release()  # not its lock any more: no effect
    assert not await LeaseLock(engine, "t").try_acquire()


async def test_waiting_is_bounded(engine: AsyncEngine) -> None:
    a, b = LeaseLock(engine, "t"), LeaseLock(engine, "t")
    async with a.held(wait_s=5):
        with pytest.raises(LockTimeout, match="'t' lock in cronloop_lock"):
            await b.acquire(wait_s=0)
    await b.acquire(wait_s=0)


@pytest.mark.mariadb
async def test_bootstrap_on_an_empty_database_is_idempotent_under_concurrency(
    scratch_database: Callable[[], str],
) -> None:
    url = scratch_database()
    engines = [create_async_engine(url) for _ in range(4)]
    try:
        await asyncio.gather(*(LeaseLock(e, "migrate").ensure_table() for e in engines))
        got = await asyncio.gather(*(LeaseLock(e, "migrate").try_acquire() for e in engines))
        assert sorted(got) == [False, False, False, True]
        async with engines[0].connect() as conn:
            names = (await conn.execute(select(locks.c.name))).scalars().all()
        assert names == ["migrate"]
    finally:
        for e in engines:
            await e.dispose()
