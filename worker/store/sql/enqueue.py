"""`cronloop.enqueue`: queue a job from application code, in the caller's transaction.

The job row is inserted on what the caller gives: an `AsyncSession` or `AsyncConnection`
(joined: the job exists only if the caller's transaction commits; not committed here),
or an `AsyncEngine` or `async_sessionmaker` (a transaction of its own, committed before
returning). Code that does not use SQLAlchemy inserts the row itself (README, "Queueing
jobs"). Knows nothing of workers or the loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from cronloop.store.sql.jobs import insert_job, job_row

Target = AsyncSession | AsyncConnection | AsyncEngine | async_sessionmaker[AsyncSession]


async def enqueue(
    target: Target,
    name: str,
    args: Mapping[str, Any] | None = None,
    *,
    run_at: datetime | None = None,
    priority: int = 0,
    unique_key: str | None = None,
    max_retries: int | None = None,
) -> int:
    """Queue job `name` with `args` (a JSON object: the handler's keyword arguments); its
    id. `run_at` (aware) delays it; a higher `priority` runs first; with `unique_key`,
    while a job of that name and key is planned or running, its id is returned and
    nothing is added. `max_retries` overrides the kind's. ValueError names a bad value."""
    row = job_row(
        name, args, run_at=run_at, priority=priority, unique_key=unique_key, max_retries=max_retries
    )
    if isinstance(target, AsyncSession):
        return await insert_job(target, target.get_bind().dialect, row)
    if isinstance(target, AsyncConnection):
        return await insert_job(target, target.dialect, row)
    if isinstance(target, AsyncEngine):
        async with target.begin() as conn:
            return await insert_job(conn, conn.dialect, row)
    if isinstance(target, async_sessionmaker):
        async with target() as session, session.begin():
            return await insert_job(session, session.get_bind().dialect, row)
    raise TypeError(
        "enqueue needs an AsyncSession, AsyncConnection, AsyncEngine or async_sessionmaker, "
        f"not {type(target).__name__}"
    )
