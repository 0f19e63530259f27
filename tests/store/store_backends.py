"""Test support for the store suites: the stores under test and what a test needs to do
to their rows behind the store's back (expire a lease, let another worker steal one,
read a column no verb returns).

These are test-only verbs: they live here, not on the production classes. One
`Backend` per implementation: `memory`, `sqlite`, `mariadb`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

import cronloop.standard  # noqa: F401  (registers the standard tasks' tables)
from cronloop.config.settings import Settings
from cronloop.domain.outcome import Outcome
from cronloop.domain.records import RunRecord, TaskDeclaration
from cronloop.standard.schema import metadata as tasks_metadata
from cronloop.store.interface import Store
from cronloop.store.memory import MemoryDatabase, MemoryStore
from cronloop.store.sql.engine import create_engine, db_now
from cronloop.store.sql.migrate import upgrade
from cronloop.store.sql.store import SqlStore
from cronloop.store.sql.tables import jobs, metadata, runs, tasks

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(days=3650)


def decl(name: str, first_run: datetime | None = NOW, **kw: Any) -> TaskDeclaration:
    return TaskDeclaration(
        name=name,
        schedule=str(kw.pop("schedule", "every 60s")),
        timeout_s=10.0,
        first_run=first_run,
        **kw,
    )


def record(outcome: Outcome, next_run: datetime, duration_s: float = 1.0, **kw: Any) -> RunRecord:
    return RunRecord(
        outcome=outcome,
        started=NOW,
        ended=NOW + timedelta(seconds=duration_s),
        duration_s=duration_s,
        next_run=next_run,
        planned_run=next_run,
        **kw,
    )


class Backend:
    """One store implementation under test, and the rows behind it."""

    name: str

    def __init__(self) -> None:
        self.opened: list[Store] = []

    def store(
        self,
        worker_id: str = "w1",
        *,
        lease_s: float = 30.0,
        quarantine_timeouts: int = 0,
        quarantine_strikes: int = 0,
        max_clock_skew_s: float = 0.0,
    ) -> Store:
        """A worker's store over the same table (closed at the end of the test)."""
        store = self._make(
            worker_id,
            {
                "lease_s": lease_s,
                "quarantine_timeouts": quarantine_timeouts,
                "quarantine_strikes": quarantine_strikes,
                "max_clock_skew_s": max_clock_skew_s,
            },
        )
        self.opened.append(store)
        return store

    def _make(self, worker_id: str, options: dict[str, Any]) -> Store:
        """The store of `worker_id` with the store's keyword `options`."""
        raise NotImplementedError

    async def close(self) -> None:
        for store in self.opened:
            await store.close()

    async def set_task(self, name: str | None = None, **values: Any) -> None:
        """Write columns of one task row (all rows if `name` is None), as another worker
        or an operator with a SQL prompt would."""
        raise NotImplementedError

    async def task_row(self, name: str) -> dict[str, Any]:
        """Every column of a task row."""
        raise NotImplementedError

    async def run_rows(self) -> dict[str, dict[str, Any]]:
        """Every history row, by run id."""
        raise NotImplementedError

    async def expire_leases(self, name: str | None = None) -> None:
        """The leases ran out (the worker was stopped or lost)."""
        await self.set_task(name, lease_until=LONG_AGO)

    async def expire_job_leases(self) -> None:
        """Every job lease ran out (the worker running them was lost)."""
        raise NotImplementedError

    async def lease_expired_by(self, seconds: float, name: str | None = None) -> None:
        """Set task leases (one task's, or all held ones) to end `seconds` before the
        database clock's now (negative: still that long to run): the clock injected
        where the database's own is the one leases use."""
        raise NotImplementedError

    async def job_leases_expired_by(self, seconds: float) -> None:
        """The same for every held job lease."""
        raise NotImplementedError

    def engine_or_none(self) -> AsyncEngine | None:
        """The SQL engine behind the store (None: in memory)."""
        return None


class MemoryBackend(Backend):
    name = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.db = MemoryDatabase()

    def _make(self, worker_id: str, options: dict[str, Any]) -> Store:
        return MemoryStore(self.db, worker_id=worker_id, **options)

    async def lease_expired_by(self, seconds: float, name: str | None = None) -> None:
        for row in self.db.tasks.values():
            if (name is None or row.name == name) and row.lease_until is not None:
                row.lease_until = self.db.now(-seconds)

    async def job_leases_expired_by(self, seconds: float) -> None:
        for row in self.db.jobs.values():
            if row.lease_until is not None:
                row.lease_until = self.db.now(-seconds)

    async def set_task(self, name: str | None = None, **values: Any) -> None:
        for row in self.db.tasks.values():
            if name is None or row.name == name:
                row.set(values)

    async def task_row(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(self.db.by_name(name))

    async def expire_job_leases(self) -> None:
        for row in self.db.jobs.values():
            if row.lease_until is not None:
                row.lease_until = LONG_AGO

    async def run_rows(self) -> dict[str, dict[str, Any]]:
        return {run_id: dataclasses.asdict(r) for run_id, r in self.db.runs.items()}


class SqlBackend(Backend):
    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__()
        self.engine = engine
        self.name = engine.dialect.name

    def _make(self, worker_id: str, options: dict[str, Any]) -> Store:
        return SqlStore(self.engine, worker_id=worker_id, **options)

    async def lease_expired_by(self, seconds: float, name: str | None = None) -> None:
        until = db_now(self.engine.dialect, -seconds)
        statement = update(tasks).where(tasks.c.lease_until.is_not(None)).values(lease_until=until)
        if name is not None:
            statement = statement.where(tasks.c.name == name)
        async with self.engine.begin() as conn:
            await conn.execute(statement)

    async def job_leases_expired_by(self, seconds: float) -> None:
        until = db_now(self.engine.dialect, -seconds)
        async with self.engine.begin() as conn:
            await conn.execute(
                update(jobs).where(jobs.c.lease_until.is_not(None)).values(lease_until=until)
            )

    async def set_task(self, name: str | None = None, **values: Any) -> None:
        statement = update(tasks).values(**values)
        if name is not None:
            statement = statement.where(tasks.c.name == name)
        async with self.engine.begin() as conn:
            await conn.execute(statement)

    async def expire_job_leases(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                update(jobs).where(jobs.c.lease_until.is_not(None)).values(lease_until=LONG_AGO)
            )

    def engine_or_none(self) -> AsyncEngine | None:
        return self.engine

    async def task_row(self, name: str) -> dict[str, Any]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(tasks).where(tasks.c.name == name))).one()
        return dict(row._mapping)

    async def run_rows(self) -> dict[str, dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(runs))).all()
        return {r.run_id: dict(r._mapping) for r in rows}


@asynccontextmanager
async def sql_engine(url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated, empty database at `url` (SQLite: a fresh file; MariaDB: the session's
    scratch database, emptied)."""
    engine = create_engine(Settings(database_url=url, lease_s=30.0))
    try:
        if engine.dialect.name == "sqlite":
            await upgrade(engine)
        else:
            async with engine.begin() as conn:
                for table in [
                    *reversed(tasks_metadata.sorted_tables),
                    *reversed(metadata.sorted_tables),
                ]:
                    await conn.execute(delete(table))
        yield engine
    finally:
        await engine.dispose()


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cronloop.db'}"
