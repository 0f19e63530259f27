"""Leases held: renewing them, giving a claim back, freeing a kept lease, and closing
the history of runs whose worker vanished. A part of `SqlStore`; `renew_fenced` is also
the job queue's renewal (`jobs`): one lease mechanism for both tables.

Every write is conditional on (task id, lease token): a worker that lost its lease
changes nothing. Lease times are the database's clock. Knows nothing of when to renew.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Table, and_, select, update

from cronloop.domain.outcome import Outcome
from cronloop.domain.records import Claim
from cronloop.store.interface import ABANDONED_ERROR
from cronloop.store.sql.connector import Connector
from cronloop.store.sql.tables import runs, tasks

T = tasks.c
R = runs.c


async def renew_fenced(
    db: Connector, table: Table, lease_s: float, claims: Iterable[Claim]
) -> set[str]:
    """Extend the leases held in `table` (the task table, or the job table: both have
    `id`, `lease_token`, `lease_until`) by `lease_s` from the database clock; return the
    run ids whose lease was lost.

    One UPDATE for all (tokens are random per claim batch, so `id IN ... AND token IN ...`
    matches only our rows), and a SELECT only if some row did not match."""
    claims = list(claims)
    if not claims:
        return set()
    c = table.c
    ids = [claim.task_id for claim in claims]
    tokens = sorted({claim.token for claim in claims})
    mine = and_(c.id.in_(ids), c.lease_token.in_(tokens))
    async with db.begin() as conn:
        result = await conn.execute(update(table).where(mine).values(lease_until=db.now(lease_s)))
        if result.rowcount == len(claims):
            return set()
        rows = await conn.execute(select(c.id, c.lease_token).where(mine))
        held = {(r.id, r.lease_token) for r in rows}
    return {claim.run_id for claim in claims if (claim.task_id, claim.token) not in held}


class Leases:
    """`renew`, `release`, `free_lease`, `reap_abandoned`."""

    def __init__(self, db: Connector, lease_s: float) -> None:
        self.db = db
        self.lease_s = lease_s

    async def renew(self, claims: Iterable[Claim]) -> set[str]:
        """Extend the leases of runs still owned; return the run ids whose lease was lost."""
        return await renew_fenced(self.db, tasks, self.lease_s, claims)

    async def release(self, claim: Claim) -> bool:
        """Give a claim back unrun (this worker cannot run that task): free the lease and
        mark its history row `skipped`; nothing if the lease was lost meanwhile."""
        async with self.db.begin() as conn:
            result = await conn.execute(
                update(tasks)
                .where(T.id == claim.task_id, T.lease_token == claim.token)
                .values(owner=None, lease_token=None, lease_until=None)
            )
            if result.rowcount != 1:  # taken over: its history row says abandoned
                return False
            await conn.execute(
                update(runs)
                .where(R.run_id == claim.run_id)
                .values(outcome=Outcome.SKIPPED, ended=self.db.now(), error="released unrun")
            )
        return True

    async def free_lease(self, claim: Claim) -> bool:
        """Free a lease kept by `complete(keep_lease=True)` once the task really ended."""
        async with self.db.begin() as conn:
            result = await conn.execute(
                update(tasks)
                .where(T.id == claim.task_id, T.lease_token == claim.token)
                .values(owner=None, lease_token=None, lease_until=None)
            )
        return result.rowcount == 1

    async def reap_abandoned(self) -> int:
        """Close history rows of runs whose worker vanished, so history never shows a run
        as `running` forever, even for a task nobody claims again (paused, removed)."""
        async with self.db.begin() as conn:
            stale = (
                select(T.run_id)
                .where(T.lease_token.is_not(None), T.lease_until < self.db.expired_before())
                .scalar_subquery()
            )
            result = await conn.execute(
                update(runs)
                .where(R.outcome == Outcome.RUNNING, R.run_id.in_(stale))
                .values(
                    outcome=Outcome.ABANDONED,
                    ended=self.db.now(),
                    error=ABANDONED_ERROR,
                )
            )
        return int(result.rowcount or 0)
