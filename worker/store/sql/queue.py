"""The one way queued work is claimed: leased rows of a queue table, taken in one short
transaction, fenced by a token, taken over once their lease expires, quarantined when
they keep losing their worker.

Two tables are queues: the job queue (`cronloop_job`, `jobs.SqlJobs`) and the standard
tasks' email outbox (`cronloop_outbox`, through `cronloop.sql`). A `QueueShape` names a
table's columns (its due time, its token) and its states; `acquire` runs inside the
caller's transaction:

1. SELECT the best due candidates: planned and due, or running with an expired lease (a
   takeover), SKIP LOCKED where the server has it;
2. a takeover counts a **strike** against the row (the attempt's worker was lost: a
   crash, kill -9, an OOM kill, a watchdog exit); a row reaching `quarantine_strikes` is
   quarantined instead of run again (`strike_quarantine_reason`, the task rule's text);
3. one UPDATE that re-checks the conditions leases the rest (owner, a fresh token,
   `lease_until` on the database clock, one more attempt), so it is correct without row
   locks too; a concurrent worker's rows are left out of the result.

Every later write about a leased row is conditional on `held` (id and token): a worker
that lost its lease writes nothing. Knows nothing of asyncio tasks, deadlines or what a
row's work is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Dialect, Table, and_, case, or_, select, update

from cronloop.store.interface import strikes_quarantine, takeover_quarantine_reason
from cronloop.store.sql.engine import db_now

Pick = Callable[[list[Any]], list[Any]]


@dataclass(frozen=True)
class QueueShape:
    """A queue table: `id`, `state`, `owner`, `lease_until`, `attempts`, `strikes` and
    `last_error` columns under those names, plus the columns named here."""

    table: Table
    due: str = "run_at"  # when a planned row is due
    token: str = "lease_token"  # the fencing token of the lease
    planned: str = "planned"
    running: str = "running"
    quarantined: str = "quarantined"  # may be another state that stops the row (error)
    order: tuple[str, ...] = ("run_at", "id")  # candidates, best first ("-priority": desc)
    retry_hint: str = "`cronloop retry ID`"  # how an operator runs a quarantined row again

    def col(self, name: str) -> Any:
        return self.table.c[name]

    def no_lease(self) -> dict[str, Any]:
        """The values that free a lease."""
        return {"owner": None, self.token: None, "lease_until": None}

    def held(self, ids: Sequence[int], token: str) -> ColumnElement[bool]:
        """The rows of `ids` still leased under `token`, and running: every write about
        a leased row is conditional on this (fencing)."""
        return and_(
            self.col("id").in_(list(ids)),
            self.col(self.token) == token,
            self.col("state") == self.running,
        )

    def due_clause(self, now: Any, takeover: bool, expired_before: Any) -> ColumnElement[bool]:
        """Planned and due at `now` (a value or the database clock), or (`takeover`)
        running with a lease that ended before `expired_before` (the database clock) or
        none (a row written by hand)."""
        c = self.col
        planned = and_(c("state") == self.planned, c(self.due) <= now)
        if not takeover:
            return planned
        lapsed = or_(c("lease_until").is_(None), c("lease_until") < expired_before)
        expired = and_(c("state") == self.running, lapsed)
        return or_(planned, expired)

    def ordering(self) -> list[Any]:
        return [
            self.col(name[1:]).desc() if name.startswith("-") else self.col(name)
            for name in self.order
        ]


@dataclass(frozen=True)
class Acquired:
    """What `acquire` leased (the candidate rows won, in order; `row.state` is the state
    before: `running` for a takeover), what it quarantined (id, strikes), and how many
    suspects it left for a later claim."""

    rows: list[Any]
    quarantined: list[tuple[int, int]]
    held_back: int = 0  # suspects left for a later claim (`suspects`)

    def took_over(self, shape: QueueShape, row: Any) -> bool:
        return bool(row.state == shape.running)


async def acquire(
    conn: Any,
    dialect: Dialect,
    shape: QueueShape,
    *,
    columns: Sequence[Any] = (),
    where: ColumnElement[bool] | None = None,
    now: Any = None,
    limit: int,
    owner: str,
    token: str,
    lease_s: float,
    skip_locked: bool,
    takeover: bool = True,
    quarantine_strikes: int = 0,
    suspects: int | None = None,
    pick: Pick | None = None,
    expired_before: Any = None,
) -> Acquired:
    """Lease up to `limit` due rows (and `where`) in the caller's transaction on `conn`
    (an AsyncConnection or AsyncSession). `columns` are read with them; `pick` may drop
    candidates (per-kind caps). Due-ness uses `now` (default: the database clock).
    `quarantine_strikes` 0: never quarantine. `suspects`: at most this many rows that
    lost a worker before (`is_suspect`) among those leased (None: no limit). A lease
    is expired before `expired_before` (default: the database clock's now)."""
    c = shape.col
    due = shape.due_clause(
        db_now(dialect) if now is None else now,
        takeover,
        db_now(dialect) if expired_before is None else expired_before,
    )
    if where is not None:
        due = and_(where, due)
    query = (
        select(c("id"), c("state"), c("strikes"), *columns)
        .where(due)
        .order_by(*shape.ordering())
        .limit(limit)
    )
    if skip_locked:
        query = query.with_for_update(skip_locked=True)
    rows = list((await conn.execute(query)).all())
    if not rows:
        return Acquired([], [])
    doomed = [
        r for r in rows if r.state == shape.running and strikes_quarantine(r, quarantine_strikes)
    ]
    quarantined = await _quarantine(conn, shape, doomed, due) if doomed else []
    gone = {row_id for row_id, _ in quarantined} | {r.id for r in doomed}
    rows = [r for r in rows if r.id not in gone]
    held_back = 0
    if suspects is not None:
        chosen = _at_most_suspects(shape, rows, suspects)
        held_back, rows = len(rows) - len(chosen), chosen
    if pick is not None:
        rows = pick(rows)
    if not rows:
        return Acquired([], quarantined, held_back)
    ids = [r.id for r in rows]
    result = await conn.execute(
        update(shape.table)
        .where(c("id").in_(ids), due)
        .ordered_values(
            # a takeover's strike first: MySQL assigns left to right, with the new values
            (c("strikes"), c("strikes") + case((c("state") == shape.running, 1), else_=0)),
            (c("state"), shape.running),
            (c("owner"), owner[:255]),
            (c(shape.token), token),
            (c("lease_until"), db_now(dialect, lease_s)),
            (c("attempts"), c("attempts") + 1),
        )
    )
    if result.rowcount != len(ids):  # a concurrent worker won some
        ours = select(c("id")).where(c("id").in_(ids), c(shape.token) == token)
        taken = set((await conn.execute(ours)).scalars())
        rows = [r for r in rows if r.id in taken]
    return Acquired(rows, quarantined, held_back)


def is_suspect(shape: QueueShape, row: Any) -> bool:
    """The row lost a worker before (struck), or is being taken over now."""
    return bool(row.state == shape.running or int(row.strikes) > 0)


def _at_most_suspects(shape: QueueShape, rows: list[Any], suspects: int) -> list[Any]:
    """The candidates, at most `suspects` of them suspects, in order. The job side asks
    for one at a time per worker, so no suspect runs beside another: the bystanders a
    poison job's crash struck are never taken over together with it, and they are not
    quarantined for what it did."""
    chosen = []
    for row in rows:
        if is_suspect(shape, row):
            if suspects <= 0:
                continue
            suspects -= 1
        chosen.append(row)
    return chosen


async def _quarantine(
    conn: Any, shape: QueueShape, rows: list[Any], due: ColumnElement[bool]
) -> list[tuple[int, int]]:
    """Take rows out of the queue, each with its reason; those a concurrent worker took
    meanwhile (the re-check fails) are left alone."""
    c = shape.col
    done = []
    for row in rows:
        strikes = int(row.strikes) + 1
        result = await conn.execute(
            update(shape.table)
            .where(c("id") == row.id, c("state") == shape.running, due)
            .values(
                **shape.no_lease(),
                state=shape.quarantined,
                strikes=strikes,
                last_error=takeover_quarantine_reason(strikes, shape.retry_hint),
            )
        )
        if result.rowcount == 1:
            done.append((int(row.id), strikes))
    return done
