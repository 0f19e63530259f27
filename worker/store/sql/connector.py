"""What every part of the SQL store shares: the engine, the database clock, the SQLite
write lock, the server's SKIP LOCKED support and the idle probe's kept connection.

One small holder, so the parts (`taskset`, `claims`, `leases`, `record`, `quarantine`,
`admin`) are composed beside each other instead of inheriting from each other. Knows how
to open transactions, never which rows they touch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cronloop.store.sql.engine import db_now, server_supports_skip_locked


class Connector:
    def __init__(self, engine: AsyncEngine, *, max_clock_skew_s: float = 0.0) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self.max_clock_skew_s = max_clock_skew_s
        self._write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        self._skip_locked: bool | None = None
        self._probe: AsyncConnection | None = None

    def now(self, plus_s: float = 0.0) -> Any:
        """The database server's clock (+ `plus_s`) as a SQL expression: leases only."""
        return db_now(self.dialect, plus_s)

    def expired_before(self) -> Any:
        """The database clock less `max_clock_skew_s`: a lease counts as expired only once
        its `lease_until` is before this. The lease may have been stamped by another node
        of a cluster, whose clock may be that much behind this one's."""
        return db_now(self.dialect, -self.max_clock_skew_s)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction. On SQLite, one at a time per process: connections of one
        pool competing for SQLite's single write lock back off by sleeping, which made a
        busy worker fall seconds behind; an asyncio lock queues them instead."""
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    def connect(self) -> Any:
        """A read-only connection (`async with`): no write lock, rolled back on close."""
        return self.engine.connect()

    async def skip_locked(self) -> bool:
        """Whether the server has SKIP LOCKED; asked once."""
        if self._skip_locked is None:
            self._skip_locked = await server_supports_skip_locked(self.engine)
        return self._skip_locked

    async def probe(self) -> AsyncConnection:
        """The kept autocommit connection of the idle probe (one statement a poll, no
        pool check-out or COMMIT around it)."""
        if self._probe is None:
            conn = await self.engine.connect()
            self._probe = await conn.execution_options(isolation_level="AUTOCOMMIT")
        return self._probe

    async def drop_probe(self) -> None:
        """Throw the kept connection away (it broke, or the store closes)."""
        conn, self._probe = self._probe, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()
