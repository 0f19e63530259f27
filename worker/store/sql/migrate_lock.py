"""The cluster-wide migration lock: a lease row in `cronloop_lock`, not GET_LOCK.

GET_LOCK is local to one server: on a Galera cluster two workers on two nodes both got it
and both migrated. Here the lock is the row `name = 'migrate'`, taken by one conditional
UPDATE (free, or its lease expired on the database clock), renewed while the holder
migrates, and released by clearing its token. Every write is a row write, so Galera
certifies it like any other: two nodes taking the lock at once both succeed locally,
one of them fails certification (1213), retries, and finds the row taken.

Bootstrapping, when two workers start on an empty database at once: the table is made
with `CREATE TABLE IF NOT EXISTS` and its row with an `INSERT IGNORE` of the fixed key.
Galera runs DDL in total order isolation (TOI): both CREATEs are ordered cluster-wide,
the second finds the table and only warns. The two INSERT IGNOREs of one key conflict at
certification; the loser is retried and then ignores the existing row. Both steps are
idempotent, so either order of any number of workers ends with one table and one row.

Ordering: the waiter's UPDATE can only see the lock free once its node has applied the
holder's release, and Galera applies write sets in one total order, so by then the
holder's DDL and version rows are applied there too: the waiter finds the schema current.

It knows one lock row and the database clock; never what is done under the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import structlog
from sqlalchemy import insert, or_, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.schema import CreateTable

from cronloop.store.sql.engine import db_now
from cronloop.store.sql.retry import retry_conflicts
from cronloop.store.sql.tables import locks

log = structlog.get_logger("cronloop.migrate")
L = locks.c

MIGRATE_LOCK = "migrate"
LEASE_S = 30.0  # a crashed holder blocks the others this long at most
RENEW_EVERY_S = 5.0
RETRY_EVERY_S = 0.5  # a waiter asks again this often (with jitter)


class LockTimeout(RuntimeError):
    """Another process held the lock for longer than we would wait."""


class LeaseLock:
    """One named lease row on `engine`; `held()` is the context to work under."""

    def __init__(self, engine: AsyncEngine, name: str, *, lease_s: float = LEASE_S) -> None:
        self.engine = engine
        self.name = name
        self.lease_s = lease_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}"[:255]
        self.token = str(uuid.uuid4())
        self._rng = random.Random()

    async def ensure_table(self) -> None:
        """The table and this lock's row, idempotent under concurrency (see the module)."""

        async def create() -> None:
            async with self.engine.begin() as conn:
                await conn.execute(CreateTable(locks, if_not_exists=True))
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(locks)
                    .values(name=self.name)
                    .prefix_with("IGNORE", dialect="mysql")
                    .prefix_with("OR IGNORE", dialect="sqlite")
                )

        await retry_conflicts(create, what="lock table bootstrap")

    async def try_acquire(self) -> bool:
        """Take the lock if it is free or its lease expired; True if we hold it now."""
        now = db_now(self.engine.dialect)
        statement = (
            update(locks)
            .where(
                L.name == self.name, or_(L.token.is_(None), L.until < now, L.token == self.token)
            )
            .values(
                holder=self.holder,
                token=self.token,
                until=db_now(self.engine.dialect, self.lease_s),
            )
        )
        return await self._write(statement, "lock acquire") == 1

    async def renew(self) -> bool:
        """Extend our lease; False if it is no longer ours (it expired and was taken)."""
        statement = (
            update(locks)
            .where(L.name == self.name, L.token == self.token)
            .values(until=db_now(self.engine.dialect, self.lease_s))
        )
        return await self._write(statement, "lock renew") == 1

    async def release(self) -> None:
        statement = (
            update(locks)
            .where(L.name == self.name, L.token == self.token)
            .values(holder=None, token=None, until=None)
        )
        await self._write(statement, "lock release")

    async def acquire(self, wait_s: float) -> None:
        """Wait until we hold the lock, at most `wait_s` (LockTimeout after that)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while not await self.try_acquire():
            if loop.time() >= deadline:
                raise LockTimeout(f"waited {wait_s:g}s for the {self.name!r} lock in {locks.name}")
            # nothing announces a release across a cluster: ask again shortly
            await asyncio.sleep(RETRY_EVERY_S * self._rng.uniform(0.5, 1.0))

    @asynccontextmanager
    async def held(self, wait_s: float) -> AsyncIterator[None]:
        """Hold the lock (renewed in the background) for the body, then release it."""
        await self.ensure_table()
        await self.acquire(wait_s)
        renewer = asyncio.create_task(self._keep_renewing(), name=f"renew {self.name} lock")
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            try:
                await self.release()
            except Exception as exc:  # its lease ends by itself
                log.warning("could not release the lock", lock=self.name, error=str(exc)[:200])

    async def _keep_renewing(self) -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY_S)
            try:
                if not await self.renew():
                    log.error("the lock's lease was lost while holding it", lock=self.name)
                    return
            except Exception as exc:  # a blip: the next renewal may succeed in time
                log.warning("lock renewal failed", lock=self.name, error=str(exc)[:200])

    async def _write(self, statement: Any, what: str) -> int:
        async def attempt() -> int:
            async with self.engine.begin() as conn:
                result = await conn.execute(statement)
            return int(cast("CursorResult[Any]", result).rowcount)

        return await retry_conflicts(attempt, what=what)
