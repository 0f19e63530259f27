"""Pooled MariaDB connections are pinged only after sitting idle, and a dead one is
replaced without the caller noticing (the per-checkout ping was two round trips a run)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

import cronloop.store.sql.engine
from cronloop.config.settings import Settings
from cronloop.store.sql.engine import create_engine

pytestmark = pytest.mark.mariadb


async def _killed_idle_connection_then_query(url: str) -> int:
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.connect() as conn:
            victim = (await conn.execute(text("SELECT CONNECTION_ID()"))).scalar_one()
        admin = create_async_engine(url, poolclass=NullPool)
        try:
            async with admin.connect() as admin_conn:
                await admin_conn.execute(text(f"KILL CONNECTION {int(victim)}"))
        finally:
            await admin.dispose()
        async with engine.connect() as conn:  # the pool's only connection: the killed one
            return int((await conn.execute(text("SELECT 1"))).scalar_one())
    finally:
        await engine.dispose()


async def test_an_idle_connection_killed_by_the_server_is_replaced(
    mariadb_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cronloop.store.sql.engine, "PING_IDLE_S", 0.0)  # everything counts as idle
    assert await _killed_idle_connection_then_query(mariadb_database) == 1


async def test_a_connection_in_steady_use_is_not_pinged(
    mariadb_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the trade: without the ping the dead connection is found by the
    query itself, which fails (and the caller retries); this is what makes the test
    above able to fail."""
    monkeypatch.setattr(cronloop.store.sql.engine, "PING_IDLE_S", 3600.0)
    with pytest.raises(Exception, match=r"Lost connection|gone away|2013|2006"):
        await _killed_idle_connection_then_query(mariadb_database)
