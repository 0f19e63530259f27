"""The operator and reporting verbs: pause, resume, trigger, status, history.

A part of `SqlStore`, beside the hot path (`claims`, `record`): domain SQL on the same
tables, for the CLI. Knows nothing of leases beyond "is one held now".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, or_, select, update

from cronloop.domain.outcome import TaskStatus
from cronloop.domain.records import RunEntry, TaskState, TriggerResult, UnknownTask
from cronloop.store.rows import run_entry_of, task_state_of
from cronloop.store.sql.connector import Connector
from cronloop.store.sql.retry import conflict_retry
from cronloop.store.sql.tables import runs, tasks

T = tasks.c
R = runs.c


class AdminVerbs:
    def __init__(self, db: Connector) -> None:
        self.db = db

    # -- operator verbs -----------------------------------------------------------------

    async def pause(self, name: str) -> str:
        """Stop scheduling a task (a run in progress finishes). Returns the old status."""
        return await self._set_status(name, TaskStatus.PAUSED, reason="paused by an operator")

    async def resume(self, name: str) -> str:
        """Make a paused or quarantined task active again and clear its strike counters."""
        return await self._set_status(name, TaskStatus.ACTIVE, reason=None)

    @conflict_retry("admin status change")
    async def _set_status(self, name: str, status: TaskStatus, reason: str | None) -> str:
        async with self.db.begin() as conn:
            old = (await conn.execute(select(T.status).where(T.name == name))).scalar_one_or_none()
            if old is None:
                raise UnknownTask(name)
            if old in (TaskStatus.REMOVED, TaskStatus.DISABLED) and status == TaskStatus.ACTIVE:
                return str(old)  # configuration, not the operator, decides those
            values: dict[str, Any] = {
                "status": status,
                "status_reason": reason,
                "updated": self.db.now(),
            }
            if status == TaskStatus.ACTIVE:
                values.update(strikes=0, consecutive_timeouts=0)
            await conn.execute(update(tasks).where(T.name == name).values(**values))
        return str(old)

    @conflict_retry("admin trigger")
    async def trigger(self, name: str, now: datetime) -> TriggerResult:
        """Run a task as soon as possible, without moving its regular schedule."""
        async with self.db.begin() as conn:
            status = (
                await conn.execute(select(T.status).where(T.name == name))
            ).scalar_one_or_none()
            if status is None:
                raise UnknownTask(name)
            if status != TaskStatus.ACTIVE:
                return TriggerResult.NOT_ACTIVE
            await conn.execute(
                update(tasks)
                .where(T.name == name)
                .values(
                    next_run=case(
                        (or_(T.next_run.is_(None), T.next_run > now), now), else_=T.next_run
                    ),
                    updated=self.db.now(),
                )
            )
        return TriggerResult.QUEUED

    # -- reading ------------------------------------------------------------------------

    async def status(self, names: Sequence[str] | None = None) -> list[TaskState]:
        running = and_(T.lease_token.is_not(None), T.lease_until >= self.db.expired_before())
        query = select(tasks, running.label("running")).order_by(T.name)
        if names:
            query = query.where(T.name.in_(list(names)))
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [task_state_of(r, bool(r.running)) for r in rows]

    async def history(self, name: str | None = None, limit: int = 50) -> list[RunEntry]:
        query = select(runs).order_by(R.started.desc(), R.id.desc()).limit(limit)
        if name is not None:
            query = query.where(R.task_name == name)
        async with self.db.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [run_entry_of(r) for r in rows]

    async def task_names(self) -> list[str]:
        async with self.db.connect() as conn:
            return list((await conn.execute(select(T.name).order_by(T.name))).scalars())
