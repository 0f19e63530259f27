"""Shared fixtures: a migrated database on SQLite and on real MariaDB.

MariaDB tests use the server named by `CRONLOOP_TEST_MYSQL_URL`
(e.g. `mysql+aiomysql://root@127.0.0.1:3306/test`). Each test session creates its own
scratch database on that server (so parallel runs do not collide) and drops it at the
end. Without the variable they are skipped, unless `CRONLOOP_REQUIRE_MARIADB=1` (set by
CI), which turns the skip into a failure so they can never silently not run.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import delete
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import cronloop.standard  # noqa: F401  (registers the standard tasks' tables)
from cronloop.config.settings import Settings
from cronloop.standard.schema import metadata as tasks_metadata
from cronloop.store.sql.engine import create_engine
from cronloop.store.sql.migrate import upgrade
from cronloop.store.sql.tables import metadata

MYSQL_URL = os.environ.get("CRONLOOP_TEST_MYSQL_URL", "")
REQUIRE_MARIADB = os.environ.get("CRONLOOP_REQUIRE_MARIADB") == "1"
BACKENDS = ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)]


def _need_mariadb() -> None:
    if MYSQL_URL:
        return
    if REQUIRE_MARIADB:
        pytest.fail("CRONLOOP_REQUIRE_MARIADB=1 but CRONLOOP_TEST_MYSQL_URL is not set")
    pytest.skip("set CRONLOOP_TEST_MYSQL_URL to run the MariaDB tests")


def _server_url(database: str | None) -> str:
    url = make_url(MYSQL_URL).set(drivername="mysql+aiomysql")
    return url.set(database=database).render_as_string(hide_password=False)


async def _admin(sql: str) -> None:
    engine = create_async_engine(_server_url(None))
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(sql)
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[str]:
    """A scratch database on the MariaDB server, migrated once, dropped at the end."""
    _need_mariadb()
    name = f"cronloop_t_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(_admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    url = _server_url(name)

    async def migrate() -> None:
        engine = create_async_engine(url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(migrate())
        yield url
    finally:
        asyncio.run(_admin(f"DROP DATABASE IF EXISTS `{name}`"))


@pytest.fixture
def scratch_database() -> Iterator[Callable[[], str]]:
    """Makes empty MariaDB databases on demand (URLs); drops them after the test."""
    _need_mariadb()
    names: list[str] = []

    def make() -> str:
        names.append(f"cronloop_s_{os.getpid()}_{uuid.uuid4().hex[:8]}")
        asyncio.run(_admin(f"CREATE DATABASE `{names[-1]}` CHARACTER SET utf8mb4"))
        return _server_url(names[-1])

    yield make
    for name in names:
        asyncio.run(_admin(f"DROP DATABASE IF EXISTS `{name}`"))


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for each backend; the MariaDB one is shared by the session and
    emptied before each test."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cronloop.db'}"
    url: str = request.getfixturevalue("mariadb_database")
    return url


@pytest.fixture
def settings(db_url: str) -> Settings:
    return Settings(
        database_url=db_url,
        lease_s=30.0,
        poll_interval=0.2,
        grace_s=0.5,
        shutdown_grace=1.0,
        max_lifetime=0,
    )


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """A migrated, empty database."""
    eng = create_engine(settings)
    if eng.dialect.name == "sqlite":
        await upgrade(eng)
    else:
        async with eng.begin() as conn:
            for table in [
                *reversed(tasks_metadata.sorted_tables),
                *reversed(metadata.sorted_tables),
            ]:
                await conn.execute(delete(table))
    try:
        yield eng
    finally:
        await eng.dispose()
