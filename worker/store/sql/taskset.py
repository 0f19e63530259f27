"""The task set: making the table match the tasks the workers know (iTop's resync).

A part of `SqlStore`; knows the task rows' configuration columns, never leases or runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cronloop.domain.outcome import TaskStatus
from cronloop.domain.records import SyncReport, TaskDeclaration
from cronloop.store.interface import DISABLED_BY_CONFIG
from cronloop.store.sql.connector import Connector
from cronloop.store.sql.retry import retry_conflicts
from cronloop.store.sql.tables import tasks

T = tasks.c


class TaskSet:
    def __init__(self, db: Connector) -> None:
        self.db = db

    async def sync_tasks(self, declared: Iterable[TaskDeclaration]) -> SyncReport:
        """See `Store.sync_tasks`. Idempotent under concurrency: workers starting together
        (on one server or on several Galera nodes) race to insert the same rows; the
        loser's transaction (a duplicate key on one server, a certification failure or
        deadlock on a cluster) is run again from the start, and then finds the rows."""
        decls = {d.name: d for d in declared}

        async def attempt() -> SyncReport:
            async with self.db.begin() as conn:
                return await self._sync(conn, decls)

        return await retry_conflicts(
            attempt, what="task table sync", also=lambda e: isinstance(e, IntegrityError)
        )

    async def _sync(self, conn: AsyncConnection, decls: dict[str, TaskDeclaration]) -> SyncReport:
        now = self.db.now()
        rows = {
            r.name: r
            for r in (await conn.execute(select(T.name, T.status, T.schedule, T.timeout_s)))
        }
        report = SyncReport([], [], [], [], [])
        for name, d in decls.items():
            row = rows.get(name)
            target = TaskStatus.ACTIVE if d.error is None and d.enabled else TaskStatus.DISABLED
            reason = d.error or (None if d.enabled else DISABLED_BY_CONFIG)
            if row is None:
                await conn.execute(
                    insert(tasks).values(
                        name=name,
                        status=target,
                        status_reason=reason,
                        schedule=d.schedule,
                        timeout_s=d.timeout_s,
                        next_run=d.first_run,
                        planned_run=d.first_run,
                        created=now,
                        updated=now,
                    )
                )
                report.added.append(name)
                continue
            values: dict[str, Any] = {}
            if row.status in (TaskStatus.ACTIVE, TaskStatus.REMOVED, TaskStatus.DISABLED):
                if row.status != target or target == TaskStatus.DISABLED:
                    values.update(status=target, status_reason=reason)
                if row.status != target:
                    bucket = (
                        report.disabled if target == TaskStatus.DISABLED else report.reactivated
                    )
                    bucket.append(name)
            if row.schedule != d.schedule and d.first_run is not None:
                values.update(schedule=d.schedule, next_run=d.first_run, planned_run=d.first_run)
                report.replanned.append(name)
            if row.timeout_s != d.timeout_s:
                values["timeout_s"] = d.timeout_s
            if values:
                values["updated"] = now
                await conn.execute(update(tasks).where(T.name == name).values(**values))
        gone = [n for n, r in rows.items() if n not in decls and r.status != TaskStatus.REMOVED]
        if gone:
            await conn.execute(
                update(tasks).where(T.name.in_(gone)).values(status=TaskStatus.REMOVED, updated=now)
            )
            report.removed.extend(gone)
        return report
