"""`backend`: every store implementation (memory, SQLite, MariaDB) for the contract suite,
and `store`, worker w1's store on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from store_backends import Backend, MemoryBackend, SqlBackend, sql_engine, sqlite_url

from cronloop.store.interface import Store

STORES = ["memory", "sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)]


@pytest.fixture(params=STORES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """The database of the store under test (None: in memory). Not async: the MariaDB
    database is made by a session fixture that runs its own event loop."""
    if request.param == "memory":
        return None
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return str(request.getfixturevalue("mariadb_database"))


@pytest.fixture
async def backend(store_url: str | None) -> AsyncIterator[Backend]:
    if store_url is None:
        memory = MemoryBackend()
        yield memory
        await memory.close()
        return
    async with sql_engine(store_url) as engine:
        sql = SqlBackend(engine)
        try:
            yield sql
        finally:
            await sql.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    """Worker w1's store, lease 30 s."""
    return backend.store("w1")
