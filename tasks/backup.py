"""Database backups, iTop's BackupExec: a dump plus config files in a `.tar.gz`.

This module takes one backup: the task, `cronloop backup` (`backup_now`), the locks, the
spool, retention. The archive's layout (manifest first, then the dump and the
`extra_files`), its verification and `restore`: `tasks/backup_archive.py`; producing the
dump (mariadb-dump/mysqldump, or SQLite's online backup API): `tasks/backup_dump.py`.

Everything is written under temporary names in the backup directory itself
(`.cronloop-backup-*.partial/`, `<archive>.partial`), fsync'ed, and renamed only when
complete: a failed or interrupted backup leaves nothing (and a crash leaves partials that
the next backup removes).

One backup at a time: an flock on `<backup_dir>/.lock`, and on MySQL/MariaDB also the
named lock `cronloop_backup.<db>`, so two hosts do not both dump whether or not they share
the directory. A busy lock is reported ("another backup is running"), not a failure.

Retention runs *after* the new archive is in place (iTop deletes first): a failed backup
never costs a good one. Only our archives count: the name must match the pattern of
`file_name_format` and the archive must start with our manifest for the same database;
other files in the directory are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop import ScheduleError, Settings, TaskContext, resolve_timezone, state_directory, task
from cronloop.sql import create_engine
from cronloop.standard.backup_archive import (
    SUFFIX,
    Member,
    archive_name,
    archive_pattern,
    build_manifest,
    copy_hashed,
    digest,
    read_manifest,
    write_archive,
)
from cronloop.standard.backup_dump import (
    BackupError,
    DbTarget,
    Stopper,
    dump_mysql,
    find_command,
    run_in_thread,
    sqlite_copy,
)
from cronloop.standard.backup_restore import restore

PARTIAL = ".partial"
SPOOL_PREFIX = ".cronloop-backup-"
LOCK_FILE = ".lock"
BUSY = "another backup is running"
DUMP_TOOLS = ("mariadb-dump", "mysqldump")
OPTIONS: Mapping[str, Any] = {
    "retention_count": 5,
    "file_name_format": "__DB__-%Y-%m-%d_%H_%M",
    "backup_dir": "",
    "dump_command": "",
    "extra_files": "",
}

log = structlog.get_logger("cronloop.backup")
__all__ = ["BackupBusy", "BackupError", "backup", "backup_now", "read_manifest", "restore"]


class BackupBusy(BackupError):
    """Another backup holds the lock."""


@dataclass(frozen=True)
class BackupPlan:
    """Everything one backup needs, resolved from settings and task options."""

    target: DbTarget
    backup_dir: Path
    name_format: str
    tz: ZoneInfo
    retention_count: int
    dump_command: str
    extra_files: tuple[Path, ...]

    @classmethod
    def from_options(cls, settings: Settings, url: URL, options: Mapping[str, Any]) -> BackupPlan:
        opts = {**OPTIONS, **options}
        backup_dir = str(opts["backup_dir"])
        try:
            tz = resolve_timezone(settings.timezone)
        except ScheduleError as exc:
            raise BackupError(f"timezone: {exc}") from None
        extras = tuple(Path(p.strip()) for p in str(opts["extra_files"]).split(",") if p.strip())
        return cls(
            target=DbTarget.from_url(url, settings.database_password),
            backup_dir=Path(backup_dir)
            if backup_dir
            else state_directory(param_files=settings.param_files) / "backups",
            name_format=str(opts["file_name_format"]),
            tz=tz,
            retention_count=int(opts["retention_count"]),
            dump_command=str(opts["dump_command"]),
            extra_files=extras,
        )


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    seconds: float
    deleted: tuple[Path, ...]

    def describe(self) -> str:
        pruned = f"; deleted {len(self.deleted)} old archive(s)" if self.deleted else ""
        return f"backup {self.path} ({self.size / 1048576:.1f} MiB, {self.seconds:.1f} s){pruned}"


@contextlib.contextmanager
def _dir_lock(directory: Path) -> Iterator[None]:
    """flock on `<dir>/.lock`, not waiting: a second backup on this host is busy."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupBusy(BUSY) from None
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.asynccontextmanager
async def _server_lock(engine: AsyncEngine | None, target: DbTarget) -> AsyncIterator[str]:
    """The named lock on MySQL/MariaDB (held by one connection for the whole backup);
    yields the server version for the manifest."""
    if target.kind == "sqlite" or engine is None:
        yield f"SQLite {sqlite3.sqlite_version}" if target.kind == "sqlite" else "unknown"
        return
    name = f"cronloop_backup.{target.name}"[:64]
    async with engine.connect() as conn:
        server = str((await conn.execute(text("SELECT VERSION()"))).scalar_one())
        got = (await conn.execute(text("SELECT GET_LOCK(:name, 0)"), {"name": name})).scalar()
        await conn.commit()
        if got != 1:
            raise BackupBusy(BUSY)
        try:
            yield server
        finally:
            try:
                await conn.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": name})
                await conn.commit()
            except BaseException:
                await conn.invalidate()  # closing the session releases the lock
                raise


def _remove_leftovers(directory: Path, pattern: re.Pattern[str], logger: Any) -> None:
    """Partials of a backup that crashed (we hold the lock: none is in progress)."""
    for entry in directory.iterdir():
        name = entry.name
        if name.startswith(SPOOL_PREFIX) and name.endswith(PARTIAL) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif name.endswith(PARTIAL) and pattern.fullmatch(name[: -len(PARTIAL)]):
            entry.unlink(missing_ok=True)
        else:
            continue
        logger.warning("removed the leftover of an interrupted backup", path=str(entry))


def _prepare(plan: BackupPlan, name: str, logger: Any) -> Path:
    """Remove leftovers, then pick the final path: `name`, or `name-N` when a backup
    already has that name (two in one minute). Blocking: run in a thread."""
    _remove_leftovers(plan.backup_dir, archive_pattern(plan.name_format, plan.target.name), logger)
    stem = name[: -len(SUFFIX)]
    candidate, n = name, 0
    while (plan.backup_dir / candidate).exists():
        n += 1
        candidate = f"{stem}-{n}{SUFFIX}"
    return plan.backup_dir / candidate


async def _produce(plan: BackupPlan, spool: Path, stopper: Stopper, logger: Any) -> list[Member]:
    """Dump the database and snapshot the extra files into `spool`, hashing each."""
    target = plan.target
    if target.kind == "mysql":
        command = find_command(plan.dump_command, DUMP_TOOLS)
        dump = spool / f"{target.name}.sql"
        warnings = await dump_mysql(target, command, dump, stopper)
        if warnings:
            logger.warning("the dump tool reported", tool=Path(command[0]).name, stderr=warnings)
    else:
        dump = spool / f"{target.name}.sqlite3"
        await run_in_thread(lambda: sqlite_copy(target.path, dump, stopper), stopper)
    size, sha = await run_in_thread(lambda: digest(dump, stopper), stopper)
    members = [Member(dump.name, dump, size, sha)]
    for i, extra in enumerate(plan.extra_files):
        copy = spool / f"extra-{i}"
        try:
            size, sha = await run_in_thread(
                functools.partial(copy_hashed, extra, copy, stopper), stopper
            )
        except OSError as exc:
            raise BackupError(f"extra file {extra}: {exc.strerror or exc}") from None
        members.append(Member(f"extra/{extra.name}", copy, size, sha, source=str(extra)))
    return members


def _prune(plan: BackupPlan, keep_path: Path, logger: Any) -> tuple[Path, ...]:
    """Delete our oldest archives of this database while there are more than
    `retention_count` (0 = keep all). Blocking: run in a thread."""
    if plan.retention_count <= 0:
        return ()
    pattern = archive_pattern(plan.name_format, plan.target.name)
    ours: list[tuple[datetime, str, Path]] = []
    for entry in plan.backup_dir.iterdir():
        if not pattern.fullmatch(entry.name) or not entry.is_file():
            continue
        manifest = read_manifest(entry)
        db = manifest.get("database", {}) if manifest else {}
        if db.get("name") != plan.target.name or db.get("kind") != plan.target.kind:
            continue
        try:
            created = datetime.fromisoformat(str(manifest["created"]))  # type: ignore[index]
        except ValueError:
            continue
        ours.append((created, entry.name, entry))
    ours.sort()
    deleted = []
    for _created, _name, path in ours[: max(0, len(ours) - plan.retention_count)]:
        if path != keep_path:
            path.unlink(missing_ok=True)
            logger.info(
                "deleted old backup (retention)",
                path=str(path),
                retention_count=plan.retention_count,
            )
            deleted.append(path)
    return tuple(deleted)


async def run_backup(
    plan: BackupPlan,
    engine: AsyncEngine | None,
    *,
    logger: Any = log,
    stopper: Stopper | None = None,
    now: datetime | None = None,
) -> BackupResult:
    """Take one backup; raises BackupBusy if another one is running, BackupError if it
    fails (having removed everything it wrote)."""
    stopper = stopper or Stopper()
    now = now or datetime.now(UTC)
    started = time.monotonic()
    name = archive_name(plan.name_format, plan.target.name, now, plan.tz)
    for extra in plan.extra_files:
        if not extra.is_file():
            raise BackupError(f"extra file {extra} does not exist or is not a file")
    if len({e.name for e in plan.extra_files}) != len(plan.extra_files):
        raise BackupError("extra_files: two files have the same name")
    plan.backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _dir_lock(plan.backup_dir):
        async with _server_lock(engine, plan.target) as server:
            final = await run_in_thread(lambda: _prepare(plan, name, logger), stopper)
            logger.info("backup started", database=plan.target.name, archive=str(final))
            size = await _build(plan, final, server, now, stopper, logger)
        deleted = await run_in_thread(lambda: _prune(plan, final, logger), stopper)
    result = BackupResult(final, size, time.monotonic() - started, deleted)
    logger.info("backup done", archive=str(final), bytes=size, seconds=round(result.seconds, 3))
    return result


async def _build(
    plan: BackupPlan, final: Path, server: str, now: datetime, stopper: Stopper, logger: Any
) -> int:
    """Spool, archive, publish; on any way out, remove the spool and the partial."""
    spool = plan.backup_dir / f"{SPOOL_PREFIX}{uuid.uuid4().hex}{PARTIAL}"
    partial = final.with_name(final.name + PARTIAL)
    spool.mkdir(mode=0o700)
    try:
        members = await _produce(plan, spool, stopper, logger)
        manifest = build_manifest(plan.target, server, now, members)
        mtime = now.timestamp()
        return await run_in_thread(
            lambda: write_archive(partial, final, manifest, members, mtime, stopper), stopper
        )
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(spool, ignore_errors=True)


@task(at="23:30", days="monday,tuesday,wednesday,thursday,friday", timeout=3600, options=OPTIONS)
async def backup(ctx: TaskContext) -> str:
    """Back up the database (and extra_files) into a .tar.gz; keep retention_count."""
    engine: AsyncEngine = ctx.db.kw["bind"]
    plan = BackupPlan.from_options(ctx.settings, engine.url, ctx.options)

    async def checkpoint() -> None:
        await ctx.checkpoint()

    stopper = Stopper(checkpoint=checkpoint, should_stop=lambda: ctx.should_stop)
    try:
        result = await run_backup(plan, engine, logger=ctx.log, stopper=stopper)
    except BackupBusy:
        ctx.log.info(BUSY, backup_dir=str(plan.backup_dir))
        return BUSY
    return result.describe()


def options_from_settings(settings: Settings) -> dict[str, Any]:
    """The task's options as `backup.<option>` lines in the params file set them, for
    `cronloop backup` when the caller has no registry at hand."""
    raw = {
        key.rsplit(".", 1)[-1]: pv.value
        for key, pv in settings.task_options.get("backup", {}).items()
    }
    options = dict(OPTIONS)
    for key, default in OPTIONS.items():
        if key in raw:
            try:
                options[key] = int(raw[key]) if isinstance(default, int) else raw[key].strip()
            except ValueError:
                raise BackupError(f"backup.{key} = {raw[key]!r}: expected a whole number") from None
    return options


async def backup_now(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    options: Mapping[str, Any] | None = None,
) -> Path:
    """One backup now (`cronloop backup`): the archive's path; BackupBusy if another backup
    runs, BackupError if it fails. `options` as the registry resolved them (default: read
    from `settings`); a missing engine is created from the settings and disposed of."""
    own = engine is None
    engine = engine or create_engine(settings)
    try:
        plan = BackupPlan.from_options(
            settings,
            engine.url,
            options if options is not None else options_from_settings(settings),
        )
        return (await run_backup(plan, engine)).path
    finally:
        if own:
            await engine.dispose()
