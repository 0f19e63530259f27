"""Clean-up tasks: draft attachments, bulk-export results, run history.

iTop's InlineImageGC deletes one object per pass; here each run deletes in batches until
nothing is due or the deadline comes (`ctx.checkpoint()` between batches).

Every batch is one transaction that *claims* its rows: candidates are selected with
`FOR UPDATE SKIP LOCKED` on MySQL/MariaDB (SQLite serialises writers with BEGIN
IMMEDIATE), deleted by primary key, and only the files of the rows this transaction really
deleted (by rowcount per row, or `DELETE ... RETURNING` on SQLite) are removed after the
commit. So several workers never delete a row, or a file, twice.
Rows go first, files second: an interruption leaves either a row with its file (done by a
later run) or, if the process dies in the instant between the commit and the unlink, a
file without a row (harmless garbage, left on disk). A row whose file is already missing
is simply deleted.

Files are deleted only inside the task's `files_root`; anything else is logged and kept.
A row whose `file_path` cannot name a file at all (a NUL byte, not text, not encodable as
a file name) is checked *before* the batch deletes anything: it is kept, not deleted,
reported in the run's message and logged, and the rest of the batch goes on; one bad
row never stops the others' files from being deleted.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from cronloop import Outcome, TaskContext, task
from cronloop.sql import conflict_retry, rowcount, supports_skip_locked
from cronloop.sql import run_history as runs
from cronloop.standard.attachments import draft_attachments, export_results


@dataclass
class FileRemover:
    """Deletes stored files of deleted rows, refusing anything outside `root`.

    Why the parent directory is resolved and not the file: a symlink *inside* the root is
    removed as a link (never its target), while `../` or a symlinked directory that leads
    out of the root is refused.
    """

    root: str  # "" = no root configured: no file is deleted
    log: Any
    removed: int = 0
    kept_no_root: int = 0
    skipped: dict[int, str] = field(default_factory=dict)  # row id -> why its path is unusable
    _root_real: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self._root_real = os.path.realpath(self.root) if self.root else ""

    def unusable(self, row_id: int, stored: object) -> bool:
        """Whether `stored` cannot name any file; if so the row is recorded in `skipped`
        and logged, and must be kept (checked before its batch deletes anything)."""
        reason = unusable_path(stored)
        if reason is None:
            return False
        if row_id not in self.skipped:
            self.log.warning(
                "row kept: its file_path is unusable",
                row_id=row_id,
                path=repr(stored)[:300],
                reason=reason,
            )
        self.skipped[row_id] = reason
        return True

    def remove(self, rows: Sequence[tuple[int, str | None]]) -> None:
        """Best effort per file: a missing file is fine, an error is logged and skipped,
        and never stops the files after it."""
        for row_id, stored in rows:
            if not stored:
                continue
            try:
                self._remove_one(row_id, stored)
            except (OSError, ValueError) as exc:  # e.g. a path the checks let through
                self.log.warning(
                    "cannot delete stored file",
                    row_id=row_id,
                    path=repr(stored)[:300],
                    error=f"{type(exc).__name__}: {exc}",
                )

    def _remove_one(self, row_id: int, stored: str) -> None:
        if not self._root_real:
            self.kept_no_root += 1
            return
        target = self._inside_root(stored)
        if target is None:
            self.log.warning(
                "file outside files_root not deleted",
                row_id=row_id,
                path=stored,
                files_root=self.root,
            )
            return
        try:
            os.unlink(target)
        except FileNotFoundError:
            self.log.debug("stored file already gone", row_id=row_id, path=stored)
            return
        except OSError as exc:
            self.log.warning(
                "cannot delete stored file",
                row_id=row_id,
                path=stored,
                error=f"{type(exc).__name__}: {exc.strerror or exc}",
            )
            return
        self.removed += 1

    def _inside_root(self, stored: str) -> str | None:
        path = Path(stored)
        if not path.is_absolute():
            path = Path(self._root_real) / path
        if path.name in ("", ".", ".."):
            return None
        parent = os.path.realpath(path.parent)
        if os.path.commonpath([parent, self._root_real]) != self._root_real:
            return None
        return os.path.join(parent, path.name)


@conflict_retry("cleanup batch")
async def _batch_transaction(
    ctx: TaskContext,
    table: Table,
    due: ColumnElement[bool],
    batch_size: int,
    skip_locked: bool | None,
    files: FileRemover,
) -> tuple[int, list[tuple[int, str | None]], bool]:
    """One batch in a transaction of its own, run again if it lost a race; returns
    (claimed, deleted, whether the server has SKIP LOCKED)."""
    async with ctx.db.begin() as session:
        if skip_locked is None:
            skip_locked = await supports_skip_locked(session)
        claimed, deleted = await _delete_batch(session, table, due, batch_size, skip_locked, files)
    return claimed, deleted, skip_locked


async def _delete_batch(
    session: AsyncSession,
    table: Table,
    due: ColumnElement[bool],
    limit: int,
    skip_locked: bool,
    files: FileRemover,
) -> tuple[int, list[tuple[int, str | None]]]:
    """Claim up to `limit` due rows (not those already skipped) and delete those whose
    path is usable; return how many were claimed and (id, file_path) of rows deleted.
    Paths are checked here, before the DELETE: once committed, a row's file has no other
    owner."""
    t = table.c
    with_file = "file_path" in t
    query = select(t.id, t.file_path if with_file else t.id).where(due)
    if files.skipped:
        query = query.where(t.id.not_in(sorted(files.skipped)))
    query = query.limit(limit)
    if session.get_bind().dialect.name != "sqlite":
        query = query.with_for_update(skip_locked=skip_locked)
    rows = (await session.execute(query)).all()
    candidates = {int(r[0]): (r[1] if with_file else None) for r in rows}
    usable = sorted(i for i, stored in candidates.items() if not files.unusable(i, stored))
    if not usable:
        return len(candidates), []
    gone = await _delete_ids(session, table, usable)
    return len(candidates), [(row_id, candidates[row_id]) for row_id in sorted(gone)]


def unusable_path(stored: object) -> str | None:
    """Why a stored `file_path` cannot name any file, or None if it can (or is empty)."""
    if stored is None or stored == "":
        return None
    if not isinstance(stored, str):
        return f"not text ({type(stored).__name__})"
    if "\0" in stored:
        return "contains a NUL byte"
    try:
        os.fsencode(stored)
    except UnicodeError:
        return "not encodable as a file name"
    return None


async def _delete_ids(session: AsyncSession, table: Table, ids: list[int]) -> set[int]:
    """Delete claimed rows by primary key; return the ids this transaction deleted.

    The due-condition is not repeated: the rows are ours (locked FOR UPDATE, or SQLite's
    single writer), so it cannot have changed. On MySQL/MariaDB each row is deleted by
    `id = ?`: with stale index statistics a multi-row `id IN (...)` becomes a full scan
    that waits on other workers' claimed rows while they wait on ours (deadlock 1213,
    seen in tests); a primary-key equality never reads another row.
    """
    dialect = session.get_bind().dialect
    key = table.c.id
    if dialect.name != "sqlite":
        gone = set()
        for row_id in ids:
            result = await session.execute(delete(table).where(key == row_id))
            if rowcount(result):
                gone.add(row_id)
        return gone
    if dialect.delete_returning:
        result = await session.execute(delete(table).where(key.in_(ids)).returning(key))
        return {int(row_id) for row_id in result.scalars()}
    result = await session.execute(delete(table).where(key.in_(ids)))
    # the single writer deleted exactly what it selected; otherwise keep the files
    return set(ids) if rowcount(result) == len(ids) else set()


async def sweep(
    ctx: TaskContext, table: Table, due: ColumnElement[bool], batch_size: int, files: FileRemover
) -> int:
    """Delete due rows of `table` batch by batch, then their files; returns rows deleted."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    total = 0
    skip_locked: bool | None = None
    while True:
        await ctx.checkpoint()
        claimed, deleted, skip_locked = await _batch_transaction(
            ctx, table, due, batch_size, skip_locked, files
        )
        if not claimed:
            return total
        total += len(deleted)
        await asyncio.to_thread(files.remove, deleted)
        if claimed < batch_size:
            return total


def _report(what: str, rows: int, files: FileRemover, ctx: TaskContext) -> str:
    if files.kept_no_root:
        ctx.log.warning(
            "files_root is not set: stored files were not deleted",
            files_kept=files.kept_no_root,
            option=f"{ctx.task_name}.files_root",
        )
    message = f"deleted {rows} {what}, {files.removed} file(s)"
    if files.skipped:
        message += f"; kept {len(files.skipped)} row(s) whose file_path is unusable"
    ctx.log.info(message, rows=rows, files=files.removed, skipped=sorted(files.skipped)[:50])
    return message


def draft_due(now: datetime, lifetime_s: float) -> ColumnElement[bool]:
    """Unlinked and expired; a row without `expire` expires `lifetime_s` after upload."""
    t = draft_attachments.c
    return and_(
        t.object_id.is_(None),
        or_(
            t.expire < now,
            and_(t.expire.is_(None), t.created < now - timedelta(seconds=lifetime_s)),
        ),
    )


@task(every=3600, options={"batch_size": 500, "lifetime_s": 86400.0, "files_root": ""})
async def draft_attachment_gc(ctx: TaskContext) -> str:
    """Delete draft attachments and inline images of cancelled edits (iTop InlineImageGC)."""
    files = FileRemover(str(ctx.options["files_root"]), ctx.log)
    due = draft_due(datetime.now(UTC), float(ctx.options["lifetime_s"]))
    rows = await sweep(ctx, draft_attachments, due, int(ctx.options["batch_size"]), files)
    return _report("draft attachment(s)", rows, files, ctx)


@task(every=86400, options={"batch_size": 500, "max_age_s": 86400.0, "files_root": ""})
async def bulk_export_gc(ctx: TaskContext) -> str:
    """Delete bulk-export results older than max_age_s and their temporary files."""
    files = FileRemover(str(ctx.options["files_root"]), ctx.log)
    cutoff = datetime.now(UTC) - timedelta(seconds=float(ctx.options["max_age_s"]))
    due = export_results.c.created < cutoff
    rows = await sweep(ctx, export_results, due, int(ctx.options["batch_size"]), files)
    return _report("bulk export result(s)", rows, files, ctx)


@task(every=86400, options={"batch_size": 1000, "retention_days": 30})
async def history_gc(ctx: TaskContext) -> str:
    """Prune the run history older than `history_gc.retention_days` (0 = keep)."""
    days = int(ctx.options["retention_days"])
    if days <= 0:
        return "history_gc.retention_days = 0: history kept"
    cutoff = datetime.now(UTC) - timedelta(days=days)
    # a row still `running` belongs to a live (or not yet reaped) run: never pruned
    due = and_(runs.c.started < cutoff, runs.c.outcome != Outcome.RUNNING.value)
    rows = await sweep(ctx, runs, due, int(ctx.options["batch_size"]), FileRemover("", ctx.log))
    message = f"deleted {rows} run history row(s) older than {days} day(s)"
    ctx.log.info(message, rows=rows)
    return message
