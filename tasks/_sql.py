"""SQL idioms the standard tasks share (private: not a contract with the application).

The database clock is `cronloop.store.sql.engine.db_now`; what is here is what several
tasks need on top
of SQLAlchemy and would otherwise each write again.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import BigInteger, Column, Integer, text
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from cronloop.store.sql.engine import skip_locked_in


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
