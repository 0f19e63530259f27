"""Shared fixtures: a migrated database on SQLite and on real MariaDB, and what every
suite that starts `cronloop` processes needs (the console script, the standard tasks
switched off).

MariaDB tests use the server named by `CRONLOOP_TEST_MYSQL_URL`
(e.g. `mysql+aiomysql://root@127.0.0.1:3306/test`) behind the one gate in
`tests.support.mariadb`: skipped without it, failed under `CRONLOOP_REQUIRE_MARIADB=1`
(CI). Each test session creates its own scratch database on that server (so parallel
runs do not collide) and drops it at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import cronloop.standard  # noqa: F401  (registers the standard tasks' tables)
from cronloop.config.settings import Settings
from cronloop.standard.schema import metadata as tasks_metadata
from cronloop.store.sql.engine import create_engine
from cronloop.store.sql.migrate import upgrade
from cronloop.store.sql.tables import metadata
from tests.support import mariadb
from tests.support.cli import standard_tasks_off
from tests.support.env import need_console_script

BACKENDS = ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)]


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[str]:
    """A scratch database on the MariaDB server, migrated once, dropped at the end."""
    with mariadb.scratch_database("cronloop_t") as db:
        url = db.url("mysql+aiomysql")

        async def migrate() -> None:
            engine = create_async_engine(url)
            try:
                await upgrade(engine)
            finally:
                await engine.dispose()

        asyncio.run(migrate())
        yield url


@pytest.fixture
def scratch_database() -> Iterator[Callable[[], str]]:
    """Makes empty MariaDB databases on demand (URLs); drops them after the test."""
    mariadb.need_mariadb()
    with ExitStack() as stack:

        def make() -> str:
            return stack.enter_context(mariadb.scratch_database("cronloop_s")).url("mysql+aiomysql")

        yield make


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


# -- for the suites that start `cronloop` processes (acceptance, chaos) ----------------------


@pytest.fixture(scope="session")
def cronloop_bin() -> Path:
    """The console script; a failure (not a skip) if the venv lacks it."""
    try:
        return need_console_script()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def foreign_tasks_off(
    cronloop_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """`CRONLOOP_<TASK>__ENABLED=0` for every task installed by entry points (the standard
    tasks), so that workers run only the tasks a test chose."""
    return standard_tasks_off(tmp_path_factory.mktemp("foreign"))
