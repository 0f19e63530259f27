"""`cronloop.sql`: what a plugin's tables and queries may use from cronloop's SQL layer.

A stable, small surface over `cronloop.store.sql` (which is internal): the UTC datetime
column type and naming convention cronloop's own tables use, the database clock, the
primary-key and row-count idioms, SKIP LOCKED detection, an engine built from settings,
the run-history table (for pruning it: `history_gc`), the conflict retry of a whole
transaction (`conflict_retry`, `retry_conflicts`: a lost race, e.g. a Galera
certification failure, is run again at once), and the one claim of queued work
(`QueueShape`, `acquire_queued`: the job queue's leases, fencing, takeover and
quarantine, over a plugin's queue table: the email outbox). It never knows any plugin.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import BigInteger, Column, Integer, text
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from cronloop.store.sql.engine import create_engine, db_now, skip_locked_in
from cronloop.store.sql.queue import Acquired, QueueShape
from cronloop.store.sql.queue import acquire as acquire_queued
from cronloop.store.sql.retry import conflict_retry, retry_conflicts
from cronloop.store.sql.tables import NAMING_CONVENTION, UTCDateTime
from cronloop.store.sql.tables import runs as run_history

__all__ = [
    "NAMING_CONVENTION",
    "Acquired",
    "QueueShape",
    "UTCDateTime",
    "acquire_queued",
    "conflict_retry",
    "create_engine",
    "db_now",
    "id_column",
    "retry_conflicts",
    "rowcount",
    "run_history",
    "skip_locked_in",
    "supports_skip_locked",
]


def id_column() -> Column[Any]:
    """A BIGINT auto-increment primary key; INTEGER on SQLite, where only an
    `INTEGER PRIMARY KEY` is the auto-incrementing rowid."""
    return Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )


def rowcount(result: Any) -> int:
    """Rows changed by an UPDATE/DELETE: what decides whether a conditional write won
    (the session returns a CursorResult, typed as a plain Result)."""
    return int(cast("CursorResult[Any]", result).rowcount)


async def supports_skip_locked(session: AsyncSession) -> bool:
    """Whether `FOR UPDATE SKIP LOCKED` works: MariaDB >= 10.6, MySQL >= 8.0. SQLite
    has no row locks (BEGIN IMMEDIATE serialises its writers instead): False."""
    if session.get_bind().dialect.name == "sqlite":
        return False
    version = str((await session.execute(text("SELECT VERSION()"))).scalar_one())
    return skip_locked_in(version)
