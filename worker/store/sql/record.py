"""Recording how runs ended, many per transaction: a part of `SqlStore`.

Every write is fenced by the run's lease token: a run whose lease was lost writes
nothing. The values come from `cronloop.store.rows`, the batch SQL text from `batch`, the
quarantine on repeated timeouts from `quarantine`. Knows nothing of when runs end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import update

from cronloop.domain.records import Claim, RunRecord
from cronloop.store.interface import Ended, timeout_quarantine_reason
from cronloop.store.rows import history_values, quarantines, task_values
from cronloop.store.sql.batch import MAX_BATCH, CaseUpdate
from cronloop.store.sql.connector import Connector
from cronloop.store.sql.quarantine import quarantine_assignments
from cronloop.store.sql.tables import runs, tasks

T = tasks.c
R = runs.c


class Recording:
    """`complete` and `complete_many`. `who` is the last_user/last_host stamp;
    `quarantine_timeouts` may be changed live (0: never quarantine)."""

    def __init__(self, db: Connector, who: dict[str, str], quarantine_timeouts: int) -> None:
        self.db = db
        self.quarantine_timeouts = quarantine_timeouts
        self._who = who
        self._task_update = CaseUpdate(tasks, "id", db.dialect)
        self._run_update = CaseUpdate(runs, "run_id", db.dialect)
        self._stamp: list[str] | None = None

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
        return quarantines(claim, record, self.quarantine_timeouts)

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
        async with self.db.begin() as conn:
            result = await conn.exec_driver_sql(sql_tasks, tuple(params_tasks))
            if result.rowcount != len(chunk):
                await conn.rollback()
                return False
            await conn.exec_driver_sql(sql_runs, tuple(params_runs))
        return True

    def _stamp_sql(self) -> list[str]:
        """`updated = <the database clock>`, as SQL text for the batch statement."""
        if self._stamp is None:
            dialect = self.db.dialect
            now = self.db.now().compile(dialect=dialect, compile_kwargs={"literal_binds": True})
            self._stamp = [f"{dialect.identifier_preparer.quote('updated')} = {now}"]
        return self._stamp

    async def _write_one(self, claim: Claim, record: RunRecord, keep_lease: bool) -> bool:
        values: dict[str, Any] = task_values(claim, record, keep_lease=keep_lease)
        values.update(self._who, updated=self.db.now())
        assignments: list[tuple[Any, Any]] = []
        if self._quarantines(claim, record):
            assignments = quarantine_assignments(
                timeout_quarantine_reason(self.quarantine_timeouts)
            )
        assignments += [(T[name], value) for name, value in values.items()]
        async with self.db.begin() as conn:
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
