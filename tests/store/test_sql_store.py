"""SQL-only: how the SQL store keeps the contract cheaply (statements per verb, the idle
probe's kept connection, inlined keys, the watchdog's short-lived engine). These check
SQL behaviour, not the contract, so they run on SQLite and MariaDB only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url
from store_backends import NOW, decl, record, sql_engine, sqlite_url

from cronloop.domain.outcome import Outcome
from cronloop.store.sql.batch import _inline
from cronloop.store.sql.engine import create_short_lived_engine
from cronloop.store.sql.store import SqlStore

SQL_STORES = ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)]


@pytest.fixture(params=SQL_STORES)
def sql_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return str(request.getfixturevalue("mariadb_database"))


@pytest.fixture
async def sql_store(sql_url: str) -> AsyncIterator[SqlStore]:
    async with sql_engine(sql_url) as engine:
        store = SqlStore(engine, worker_id="w1")
        try:
            yield store
        finally:
            await store.close()


class Statements:
    """The statements the store sends, by their first word; transaction control (SQLite's
    explicit BEGIN IMMEDIATE) is not counted."""

    def __init__(self, store: SqlStore) -> None:
        self.sent: list[str] = []
        self._engine = store.engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        word = statement.split(None, 1)[0].upper()
        if word not in ("BEGIN", "COMMIT", "ROLLBACK"):
            self.sent.append(word)

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


@pytest.fixture
def statements(sql_store: SqlStore) -> Iterator[Statements]:
    seen = Statements(sql_store)
    yield seen
    seen.close()


async def test_a_claim_batch_is_one_select_one_update_one_insert(
    sql_store: SqlStore, statements: Statements
) -> None:
    await sql_store.sync_tasks([decl(f"t{i}") for i in range(20)])
    await sql_store.claim_next(NOW, 1)  # SELECT VERSION() once, on MariaDB
    statements.sent.clear()
    batch = await sql_store.claim_next(NOW, 10)
    assert len(batch.claims) == 10
    assert statements.sent == ["SELECT", "UPDATE", "INSERT"]


async def test_recording_a_batch_is_one_update_per_table(
    sql_store: SqlStore, statements: Statements
) -> None:
    await sql_store.sync_tasks([decl(f"t{i}") for i in range(20)])
    claims = await sql_store.claim_due(NOW, 20)
    statements.sent.clear()
    later = NOW + timedelta(hours=1)
    ended = [(c, record(Outcome.SUCCESS, later), False) for c in claims]
    assert await sql_store.complete_many(ended) == [True] * 20
    assert statements.sent == ["UPDATE", "UPDATE"]


async def test_renewing_held_leases_is_one_update(
    sql_store: SqlStore, statements: Statements
) -> None:
    await sql_store.sync_tasks([decl(f"t{i}") for i in range(5)])
    claims = await sql_store.claim_due(NOW, 5)
    statements.sent.clear()
    assert await sql_store.renew(claims) == set()
    assert statements.sent == ["UPDATE"]


async def test_the_idle_probe_keeps_its_connection_and_replaces_a_broken_one(
    sql_store: SqlStore, statements: Statements
) -> None:
    await sql_store.sync_tasks([decl("a")])
    statements.sent.clear()
    checkouts: list[object] = []

    def checked_out(*args: object) -> None:
        checkouts.append(args)

    pool_events = sql_store.engine.sync_engine
    event.listen(pool_events, "checkout", checked_out)
    try:
        for _ in range(5):
            assert await sql_store.next_due() == NOW
        assert statements.sent == ["SELECT"] * 5 and len(checkouts) == 1
        probe = await sql_store._db.probe()  # the kept connection breaks (server restart)
        await probe.invalidate()
        assert await sql_store.next_due() == NOW
        assert len(checkouts) == 2
    finally:
        event.remove(pool_events, "checkout", checked_out)


def test_only_keys_cronloop_makes_are_inlined() -> None:
    assert _inline(42) == "42" and _inline("ab12-3_x") == "'ab12-3_x'"
    for bad in ("x' OR '1'='1", "a b", "", True, 1.5, None):
        with pytest.raises(ValueError):
            _inline(bad)


async def test_the_watchdogs_short_lived_engine_strikes(sql_url: str) -> None:
    """A dying process strikes through an engine of its own, on a loop of its own."""
    async with sql_engine(sql_url) as engine:
        await SqlStore(engine).sync_tasks([decl("hog")])

    def strike_in_a_thread() -> list[str]:
        async def strike() -> list[str]:
            short = create_short_lived_engine(make_url(sql_url), timeout_s=2)
            try:
                return await SqlStore(short).strike(["hog"], "blocked", 1)
            finally:
                await short.dispose()

        return asyncio.run(strike())

    assert await asyncio.to_thread(strike_in_a_thread) == ["hog"]


async def test_the_short_lived_engine_gives_up_fast_on_a_dead_server() -> None:
    engine = create_short_lived_engine(make_url("mysql+aiomysql://u:s3cr3t@127.0.0.1:1/x"), 1)
    started = time.monotonic()
    try:
        with pytest.raises(Exception, match=r"(?i)connect") as caught:
            await SqlStore(engine).strike(["x"], "blocked", 1)
    finally:
        await engine.dispose()
    assert time.monotonic() - started < 3.0 and "s3cr3t" not in str(caught.value)
