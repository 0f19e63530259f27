"""The migrated schema is the models' schema, on SQLite and MariaDB."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

import tasks  # noqa: F401  (registers the standard tasks' tables)
from tasks.schema import metadata as tasks_metadata
from worker.migrate import head_revisions, schema_state, upgrade
from worker.models import VERSION_TABLE, metadata


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
