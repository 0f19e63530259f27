"""Wiring: from settings to a ready database, a registry and a store.

The CLI commands all start here, so every command sees the same database, the same
schema check and the same task set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cronloop import exitcodes
from cronloop.cli.database_file import missing_database
from cronloop.config.settings import ConfigError, Settings
from cronloop.definitions.discovery import discover_jobs
from cronloop.definitions.registry import Registry, build_registry, discover
from cronloop.domain.clock import Clock, SystemClock
from cronloop.runtime.dbhealth import DatabaseFailure, DbHealth
from cronloop.store.errors import ErrorKind
from cronloop.store.sql.claims import SyncReport, TaskDeclaration, TaskStore
from cronloop.store.sql.clocks import describe_skew, measure_clocks
from cronloop.store.sql.engine import create_engine, session_factory
from cronloop.store.sql.errors import classify
from cronloop.store.sql.migrate import schema_state, upgrade
from cronloop.systemd.logs import short_error as short

log = structlog.get_logger("cronloop.app")

CONNECT_TIMEOUT_S = 10.0  # one connection attempt at start
LOCAL_CLOCK_WARN_S = 1.0  # this host vs the database: due times vs leases
STARTUP_RETRY_BASE_S = 0.5  # doubling to the policy's cap (10 s)


class ExitError(Exception):
    """Stop the command with `exit_code` and a message for the operator."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Database:
    engine: AsyncEngine
    store: TaskStore
    sessions: async_sessionmaker[AsyncSession]

    async def close(self) -> None:
        await self.store.close()
        await self.engine.dispose()


def check_user(settings: Settings) -> None:
    """cron.php must not run as root; neither should we, unless asked explicitly."""
    if hasattr(os, "geteuid") and os.geteuid() == 0 and not settings.allow_root:
        raise ConfigError(
            "refusing to run as root: run as the service user (e.g. `sudo -u cronloop "
            "cronloop ...`), or pass --allow-root if you really mean it"
        )


def require_database(settings: Settings) -> None:
    """Stop with exit 1 when the settings' SQLite file does not exist (`cli.database_file`)."""
    problem = missing_database(settings)
    if problem is not None:
        raise ExitError(problem, exitcodes.ERROR)


def load_registry(settings: Settings) -> Registry:
    modules = settings.task_modules
    return build_registry(settings, discover(modules), discover_jobs(modules))


async def open_database(
    settings: Settings, *, migrate: bool | None = None, wait: bool = False, create: bool = False
) -> Database:
    """Connect, and make sure the schema is current.

    Only with `create` (`run`, `migrate`) may a SQLite file that does not exist be made:
    any other command stops with exit 1 naming the path it looked for.
    The embedded SQLite file is migrated by itself. A MySQL/MariaDB schema is
    migrated only with `auto_migrate = 1` (or `cronloop migrate`); otherwise a stale
    schema is a configuration error, because changing a shared database is an
    operator's decision.
    """
    if not create:
        require_database(settings)
    engine = create_engine(settings)
    try:
        if wait:
            await wait_for_database(engine, settings.startup_db_wait_s)
        auto = engine.dialect.name == "sqlite" or settings.auto_migrate
        if migrate if migrate is not None else auto:
            await upgrade(engine)
        else:
            state = await schema_state(engine)
            if not state.is_current:
                raise ExitError(
                    f"the database schema is at revision {state.current or 'none'}, this "
                    f"cronloop needs {state.head}: run `cronloop migrate` "
                    "(or set auto_migrate = 1)",
                    exitcodes.CONFIG,
                )
    except BaseException:
        await engine.dispose()
        raise
    store = TaskStore(
        engine,
        lease_s=settings.lease_s,
        quarantine_timeouts=settings.quarantine_timeouts,
        max_clock_skew_s=settings.max_clock_skew_s,
        quarantine_strikes=settings.quarantine_strikes,
    )
    return Database(engine=engine, store=store, sessions=session_factory(engine))


async def wait_for_database(engine: AsyncEngine, wait_s: float, clock: Clock | None = None) -> None:
    """Retry an unreachable database for `wait_s`, then give up with exit 75 so systemd
    tries again later: an outage at boot is not a reason for a traceback. What a failure
    means, the logging and the backoff are the runtime's database-error policy; a failure
    that is not an outage (a wrong password, an unknown database) does not get better by
    waiting: exit 78 at once, naming it."""
    clock = clock or SystemClock()
    health = DbHealth(clock, lambda: CONNECT_TIMEOUT_S, classify)
    deadline = clock.monotonic() + wait_s
    attempt = 0
    while True:
        attempt += 1
        try:
            await health.call(lambda: _ping(engine), what="connecting at start")
            return
        except DatabaseFailure as failure:
            error = short(failure.error)
            if failure.kind is ErrorKind.REFUSED:
                raise ExitError(
                    f"the database refused to start: {error}", exitcodes.CONFIG
                ) from None
            delay = health.backoff_s(STARTUP_RETRY_BASE_S, attempt)
            if clock.monotonic() + delay > deadline:
                raise ExitError(
                    f"database unreachable for {wait_s:g}s: {error}", exitcodes.TEMPFAIL
                ) from None
            await clock.sleep(delay)
        except Exception as exc:  # a bug by the policy's rules: not worth waiting for
            raise ExitError(f"cannot use the database: {short(exc)}", exitcodes.CONFIG) from None


async def check_clocks(
    engine: AsyncEngine, settings: Settings, local: Callable[[], float] = time.time
) -> None:
    """Refuse to start (exit 78) when the database nodes' clocks disagree by more than
    `max_clock_skew_s`: leases would no longer exclude a second owner, and only the
    operator can fix that (NTP, or a larger setting). That this host's clock is off the
    database's is only a warning: due times follow this host, leases the database, so
    runs start early or late but never twice. A node that cannot be read is a warning."""
    if engine.dialect.name == "sqlite":
        return  # one file, one host's clock
    try:
        report = await measure_clocks(engine, local)
    except Exception as exc:
        log.warning("could not compare the database's clock with this host's", error=short(exc))
        return
    for node, error in report.unreadable.items():
        log.warning("could not read the clock of a cluster node", node=node, error=error)
    problem = describe_skew(report, settings.max_clock_skew_s)
    if problem is not None:
        raise ExitError(problem, exitcodes.CONFIG)
    local_off = report.local_offset_at_least_s()
    if local_off > max(settings.max_clock_skew_s, LOCAL_CLOCK_WARN_S):
        log.warning(
            "this host's clock differs from the database's: runs start by this host's "
            "clock, so early or late by that much (leases use the database's: never twice)",
            at_least_s=round(local_off, 3),
        )
    log.info(
        "database clocks compared",
        nodes=len(report.nodes),
        skew_at_most_s=round(report.skew_at_most_s(), 3),
        max_clock_skew_s=settings.max_clock_skew_s,
    )


async def _ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SELECT 1")


def declarations(registry: Registry, clock: Clock) -> Iterable[TaskDeclaration]:
    now = clock.now()
    for spec in registry:
        yield TaskDeclaration(
            name=spec.name,
            schedule=spec.schedule_text,
            timeout_s=spec.timeout_s,
            first_run=spec.schedule.first_run(now) if spec.schedule else None,
            error=spec.error,
            enabled=spec.enabled,
        )


async def sync(db: Database, registry: Registry, clock: Clock) -> SyncReport:
    report = await db.store.sync_tasks(declarations(registry, clock))
    for spec in registry:
        if spec.error:
            log.error("task disabled by a bad setting", task=spec.name, error=spec.error)
    details: dict[str, Any] = {k: v for k, v in vars(report).items() if v}
    if details:
        log.info("task table synchronised", **details)
    return report
