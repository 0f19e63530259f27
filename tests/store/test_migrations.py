"""The migrated schema is the models' schema, on SQLite and MariaDB."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import cronloop.standard  # noqa: F401  (registers the standard tasks' tables)
from cronloop.standard.schema import metadata as tasks_metadata
from cronloop.store.sql.migrate import (
    UnknownRevision,
    head_revisions,
    schema_state,
    upgrade,
    version_locations,
)
from cronloop.store.sql.tables import VERSION_TABLE, metadata


def _diff(sync_conn: Any) -> list[Any]:
    context = MigrationContext.configure(
        sync_conn,
        opts={
            "version_table": VERSION_TABLE,
            "compare_type": True,
            "include_name": lambda name, type_, parent: (
                type_ != "table" or name.startswith("cronloop_")
            ),
        },
    )
    return [d for d in compare_metadata(context, [metadata, tasks_metadata])]


async def test_migrated_schema_equals_the_models(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        diff = await conn.run_sync(_diff)
    assert diff == []


async def test_schema_state_and_idempotent_upgrade(engine: AsyncEngine) -> None:
    state = await schema_state(engine)
    assert state.is_current and state.applied == head_revisions()
    assert (await upgrade(engine)).is_current  # a second upgrade is a no-op


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of a database with no tables at all."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    make: Any = request.getfixturevalue("scratch_database")
    url: str = make()
    return url


async def test_concurrent_auto_migrations_take_turns(empty_db_url: str) -> None:
    """Several workers starting at once with auto_migrate: the named lock (MariaDB) or
    the lock file (SQLite) lets one migrate; the others then find the schema current."""
    engines = [create_async_engine(empty_db_url) for _ in range(3)]
    try:
        states = await asyncio.gather(*(upgrade(e) for e in engines))
        assert all(s.is_current for s in states)
    finally:
        for e in engines:
            await e.dispose()


async def test_a_revision_no_migration_folder_has_is_refused_naming_it(empty_db_url: str) -> None:
    """A plugin uninstalled, or a newer cronloop's schema: refused before anything is
    touched, as a configuration error (exit 78) that names the revision."""
    engine = create_async_engine(empty_db_url)
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(
                text(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('0badc0ffee99')")
            )
        for attempt in (schema_state(engine), upgrade(engine)):
            with pytest.raises(UnknownRevision, match="revision 0badc0ffee99, which neither"):
                await attempt
        async with engine.connect() as conn:
            stamped = set((await conn.execute(text(f"SELECT * FROM {VERSION_TABLE}"))).scalars())
        assert stamped == {*head_revisions(), "0badc0ffee99"}  # nothing was touched
    finally:
        await engine.dispose()


def test_the_migration_folders_are_the_core_and_the_plugins() -> None:
    import cronloop.migrations
    import cronloop.standard.migrations

    core, *plugins = version_locations()
    assert Path(core) == Path(cronloop.migrations.__file__).parent / "versions"
    assert plugins == [str(Path(cronloop.standard.migrations.__file__).parent)]
