"""Schema migrations driven from code, safe when several workers start at once.

On MySQL/MariaDB the upgrade runs under the cluster-wide lease lock `migrate` in
`cronloop_lock` (`migrate_lock`: GET_LOCK is not cluster-wide on Galera), and on SQLite
under an exclusive lock file beside the database, so the second worker waits, then finds
the schema current and does nothing. The one that changed the schema logs it.

The revisions are the core's (`cronloop.migrations`) and each loaded plugin's own branch
(`Plugin.migrations`, `cronloop.definitions.plugin`). A database stamped with a revision
none of them knows (a plugin uninstalled, or a newer cronloop's schema) is refused with
`UnknownRevision`, a configuration error naming the revision, before anything is touched.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

import cronloop.migrations as core_migrations
from cronloop.config.settings import ConfigError
from cronloop.definitions.plugin import load_plugins, migration_folders
from cronloop.files import open_private
from cronloop.store.sql.migrate_lock import MIGRATE_LOCK, LeaseLock
from cronloop.store.sql.tables import VERSION_TABLE

LOCK_WAIT_S = 300
log = structlog.get_logger("cronloop.migrate")


class UnknownRevision(ConfigError):
    """The database is stamped with a revision no loaded migration folder has."""

    def __init__(self, revisions: frozenset[str]) -> None:
        names = ", ".join(sorted(revisions))
        super().__init__(
            f"the database schema is at revision {names}, which neither cronloop nor any "
            "installed plugin knows: was a plugin uninstalled, or the database migrated by a "
            "newer cronloop? Reinstall it (see `cronloop tasks`), or fix the "
            f"{VERSION_TABLE} table by hand"
        )
        self.revisions = revisions


@dataclass(frozen=True)
class SchemaState:
    """Revisions applied and revisions this code has (several heads are allowed: the
    standard tasks' tables may come as independent branches)."""

    applied: frozenset[str]
    heads: frozenset[str]

    @property
    def is_current(self) -> bool:
        return self.applied == self.heads

    @property
    def current(self) -> str | None:
        return ",".join(sorted(self.applied)) or None

    @property
    def head(self) -> str:
        return ",".join(sorted(self.heads))


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(core_migrations.__file__).parent))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", os.pathsep.join(version_locations()))
    return config


def version_locations() -> list[str]:
    """The core's revisions, then each plugin's branch (its own folder of revisions)."""
    core = Path(core_migrations.__file__).parent / "versions"
    return [str(core), *migration_folders(load_plugins())]


def head_revisions() -> frozenset[str]:
    return frozenset(ScriptDirectory.from_config(alembic_config()).get_heads())


async def schema_state(engine: AsyncEngine) -> SchemaState:
    """What is applied and what this code has; UnknownRevision if the database holds a
    revision none of the migration folders has."""
    script = ScriptDirectory.from_config(alembic_config())
    async with engine.connect() as conn:
        applied = await conn.run_sync(_applied_revisions)
    known = {rev.revision for rev in script.walk_revisions()}
    if unknown := applied - known:
        raise UnknownRevision(frozenset(unknown))
    return SchemaState(applied=applied, heads=frozenset(script.get_heads()))


def _applied_revisions(sync_conn: Any) -> frozenset[str]:
    context = MigrationContext.configure(sync_conn, opts={"version_table": VERSION_TABLE})
    return frozenset(context.get_current_heads())


async def upgrade(engine: AsyncEngine, revision: str = "heads") -> SchemaState:
    """Bring the schema to `revision` under the migration lock; a no-op when current."""
    await schema_state(engine)  # an unknown revision: refused before taking the lock
    async with _file_lock(engine), _cluster_lock(engine):
        before = await schema_state(engine)
        async with engine.connect() as conn:
            await conn.run_sync(_upgrade, revision)
            await conn.commit()
        after = await schema_state(engine)
    if after.applied != before.applied:
        log.info("database schema migrated", before=before.current, after=after.current)
    return after


def _upgrade(sync_conn: Any, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = sync_conn
    command.upgrade(config, revision)


@asynccontextmanager
async def _cluster_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """The lease lock on MySQL/MariaDB (one server or a Galera cluster)."""
    if engine.dialect.name == "sqlite":
        yield
        return
    async with LeaseLock(engine, MIGRATE_LOCK).held(LOCK_WAIT_S):
        yield


@asynccontextmanager
async def _file_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """SQLite has no named locks; an flock on `<db>.migrate.lock` serialises processes.

    The wait happens in a thread so the event loop keeps running meanwhile.
    """
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    path = Path(database).with_name(Path(database).name + ".migrate.lock")
    with os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "a") as handle:
        await asyncio.to_thread(fcntl.flock, handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
