"""The store's recording verbs: how runs ended, many per transaction.

Split from `worker/store.py` (claims, leases, the probe); `TaskStore` offers both. Every
write is fenced by the run's lease token: a run whose lease was lost writes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, update
from sqlalchemy.engine import Dialect

from cronloop.domain.outcome import Outcome, TaskStatus
from cronloop.domain.records import Claim, RunRecord
from cronloop.store.sql.admin import AdminVerbs
from cronloop.store.sql.batch import MAX_BATCH, CaseUpdate, history_values, task_values
from cronloop.store.sql.tables import runs, tasks

T = tasks.c
R = runs.c

# a run that ended: its claim, how it ended, and whether its lease must be kept
Ended = tuple[Claim, RunRecord, bool]


class RecordVerbs(AdminVerbs):
    """`TaskStore`'s recording half (with the operator verbs of `AdminVerbs` below it)."""

    quarantine_timeouts: int
    _dialect: Dialect
    _who: dict[str, str]
    _task_update: CaseUpdate
    _run_update: CaseUpdate
    _stamp: list[str] | None

    async def complete(self, claim: Claim, record: RunRecord, *, keep_lease: bool = False) -> bool:
        """Write a run's outcome, statistics and next run, and free its lease.

        `keep_lease` records the run but keeps the lease: the task could not be stopped
        (a thread cannot be killed) and nobody may start it again until `free_lease`.
        Returns False, writing nothing, if the lease was lost: the new owner's state wins.
        """
        return (await self.complete_many([(claim, record, keep_lease)]))[0]

    async def complete_many(self, ended: Sequence[Ended]) -> list[bool]:
        """Record many ended runs in one transaction; one bool per run (False: its lease
        was lost and nothing was written for it).

        Runs that end normally are written with one statement per table (see
        `cronloop.store.sql.batch`). If that statement finds fewer rows than runs, some lease
        was lost: the batch is rolled back and each run written on its own, fenced.
        Runs that keep their lease or trip the quarantine are always written alone.
        """
        plain = [e for e in ended if not e[2] and not self._quarantines(e[0], e[1])]
        written: dict[str, bool] = {}
        for start in range(0, len(plain), MAX_BATCH):
            chunk = plain[start : start + MAX_BATCH]
            if await self._write_batch(chunk):
                written.update((claim.run_id, True) for claim, _, _ in chunk)
        for claim, record, keep_lease in ended:
            if claim.run_id not in written:
                written[claim.run_id] = await self._write_one(claim, record, keep_lease)
        return [written[claim.run_id] for claim, _, _ in ended]

    def _quarantines(self, claim: Claim, record: RunRecord) -> bool:
        """This timeout is the task's `quarantine_timeouts`-th in a row."""
        limit = self.quarantine_timeouts
        return bool(
            limit
            and record.outcome == Outcome.TIMED_OUT
            and claim.consecutive_timeouts + 1 >= limit
        )

    async def _write_batch(self, chunk: Sequence[Ended]) -> bool:
        """All of `chunk` in one transaction, or nothing (False) if any lease was lost."""
        sql_tasks, params_tasks = self._task_update.build(
            {c.task_id: {**task_values(c, r, keep_lease=False), **self._who} for c, r, _ in chunk},
            extra_sql=self._stamp_sql(),
            fence=("lease_token", {c.task_id: c.token for c, _, _ in chunk}),
        )
        sql_runs, params_runs = self._run_update.build(
            {c.run_id: history_values(r) for c, r, _ in chunk}
        )
        async with self._begin() as conn:
            result = await conn.exec_driver_sql(sql_tasks, tuple(params_tasks))
            if result.rowcount != len(chunk):
                await conn.rollback()
                return False
            await conn.exec_driver_sql(sql_runs, tuple(params_runs))
        return True

    def _stamp_sql(self) -> list[str]:
        """`updated = <the database clock>`, as SQL text for the batch statement."""
        if self._stamp is None:
            now = self._now().compile(dialect=self._dialect, compile_kwargs={"literal_binds": True})
            self._stamp = [f"{self._dialect.identifier_preparer.quote('updated')} = {now}"]
        return self._stamp

    async def _write_one(self, claim: Claim, record: RunRecord, keep_lease: bool) -> bool:
        values: dict[str, Any] = task_values(claim, record, keep_lease=keep_lease)
        values.update(self._who, updated=self._now())
        assignments: list[tuple[Any, Any]] = []
        if self._quarantines(claim, record):
            assignments = self._quarantine()
        assignments += [(T[name], value) for name, value in values.items()]
        async with self._begin() as conn:
            result = await conn.execute(
                update(tasks)
                .where(T.id == claim.task_id, T.lease_token == claim.token)
                .ordered_values(*assignments)
            )
            if result.rowcount != 1:
                await conn.rollback()
                return False
            await conn.execute(
                update(runs).where(R.run_id == claim.run_id).values(**history_values(record))
            )
        return True

    def _quarantine(self) -> list[tuple[Any, Any]]:
        """Status assignments that quarantine the task, unless an operator changed its
        status meanwhile. The reason comes first: MySQL evaluates an UPDATE's
        assignments left to right, with the new values."""
        limit = self.quarantine_timeouts
        active = T.status == TaskStatus.ACTIVE
        reason = (
            f"timed out {limit} times in a row; fix the task or raise its timeout, then "
            "`cronloop resume` it"
        )
        return [
            (T.status_reason, case((active, reason), else_=T.status_reason)),
            (T.status, case((active, TaskStatus.QUARANTINED.value), else_=T.status)),
        ]
