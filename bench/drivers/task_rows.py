"""The generated tasks' rows, for both cronloop drivers: created by cronloop's own
migration and sync (as a worker would create them), then moved in time by the bench.

Rows are registered before any worker runs, so that start-up (importing and syncing up
to 100,000 tasks) never counts as scheduling, and workers never race to create them.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

CHUNK = 5000  # rows per executemany: bounded memory for 100,000 tasks


def register(url: str, module: str, workdir: Path) -> None:
    """Migrate the database at `url` and create the rows of the tasks that `module`
    (a file in `workdir`) defines, with cronloop's own start-up sync."""
    if str(workdir) not in sys.path:
        sys.path.insert(0, str(workdir))
    asyncio.run(_register(url, module))


async def _register(url: str, module: str) -> None:
    from cronloop.cli.bootstrap import open_database, sync
    from cronloop.config.settings import load_settings
    from cronloop.definitions.registry import build_registry, discover
    from cronloop.domain.clock import SystemClock
    from cronloop.systemd import logs

    logs.configure("warning", "plain")
    settings = load_settings(
        param_file="", env={}, overrides={"database_url": url, "task_modules": module}
    )
    registry = build_registry(settings, discover(settings.task_modules, use_entry_points=False))
    db = await open_database(settings, migrate=True, create=True)
    try:
        await sync(db, registry, SystemClock())
    finally:
        await db.close()


def set_phases(sync_url: str, phases: Mapping[str, datetime]) -> None:
    """Task name -> when it is next due (`next_run` and its schedule slot `planned_run`),
    in one transaction."""
    from cronloop.store.sql.tables import tasks

    if not phases:
        return
    stmt = (
        sa.update(tasks)
        .where(tasks.c.name == sa.bindparam("n"))
        .values(next_run=sa.bindparam("t"), planned_run=sa.bindparam("t"))
    )
    params = [{"n": n, "t": t} for n, t in phases.items()]
    engine = sa.create_engine(sync_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for start in range(0, len(params), CHUNK):
                conn.execute(stmt, params[start : start + CHUNK])
    finally:
        engine.dispose()
