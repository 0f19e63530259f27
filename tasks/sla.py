"""The `sla` task: SLA thresholds that passed are marked, notified and escalated.

iTop's CheckStopWatchThresholds, every 10 s. For every *running* stopwatch (TTO, TTR) of a
ticket in `cronloop_ticket` whose 75 % or 100 % deadline has passed and is not yet
triggered: mark it triggered with its overrun, queue a notification in the outbox, and on
a 100 % threshold apply iTop's `ev_timeout` transition: `new`/`approved` become
`escalated_tto`, `assigned` becomes `escalated_ttr`; any other status stays (a resolved
or closed ticket is never escalated). Like iTop, the transition follows the ticket's
status, whichever stopwatch fired; in practice TTO fires on new tickets and TTR on
assigned ones, since the application stops TTO when a ticket is assigned.

Exactly once, with any number of workers and crashes: each ticket is one transaction that
locks the row, re-checks it, and flips each flag with a conditional UPDATE; the outbox row
is inserted in that same transaction, so a ticket is never notified without being marked,
nor marked without its notification. Tickets whose data is inconsistent are marked in
`sla_error` (logged once, then skipped until the application clears it).

The options, the templates and the notification's content: `tasks/sla_notify.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import false, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cronloop import TaskContext, task
from cronloop.sql import conflict_retry, rowcount
from cronloop.standard.outbox import queue_email
from cronloop.standard.sla_notify import OPTIONS, Due, SlaConfig, notification
from cronloop.standard.tickets import STOPWATCHES, THRESHOLDS, ticket_problem, tickets

ESCALATION = {"new": "escalated_tto", "approved": "escalated_tto", "assigned": "escalated_ttr"}
# A ticket that fails unexpectedly is logged and left for the next run; this many failures
# in a row mean something systematic (database down, outbox missing): stop the run.
MAX_CONSECUTIVE_FAILURES = 3


class BadTicket(Exception):
    """The ticket's data cannot be processed; it is marked in `sla_error` and skipped."""


@dataclass
class SlaReport:
    """What a run did; `message()` is the run's result line."""

    triggered: int = 0
    escalated: int = 0
    skipped: int = 0
    emails: int = 0
    failed_ids: list[int] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return len(self.failed_ids)

    def message(self) -> str:
        parts = [
            _count(self.triggered, "threshold") + " triggered",
            _count(self.escalated, "ticket") + " escalated",
            f"{self.skipped} skipped",
        ]
        if self.failed:
            parts.append(f"{self.failed} failed (ids {', '.join(map(str, self.failed_ids))})")
        return ", ".join(parts)


@dataclass
class TicketResult:
    """What one ticket's transaction did, applied to the report only once it committed."""

    triggered: list[tuple[Due, float]] = field(default_factory=list)
    escalated_to: str | None = None
    emails: int = 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _now() -> datetime:
    return datetime.now(UTC)


@task(name="sla", every=10, timeout=60, options=OPTIONS)
async def sla(ctx: TaskContext) -> str:
    """Notify and escalate tickets whose SLA thresholds passed (CheckStopWatchThresholds)."""
    report = await process_due(ctx, _now())
    if report.failed:
        # The others were processed; failing the run makes the problem visible in
        # `cronloop status` and its failure counters. The next run retries those tickets.
        raise RuntimeError(report.message())
    return report.message()


async def process_due(ctx: TaskContext, now: datetime) -> SlaReport:
    """Process every threshold due at `now`, oldest deadline first, in batches, with a
    checkpoint before each ticket. `now` is fixed for the run (what falls due meanwhile
    waits 10 s for the next one); tests call this with their own `now`."""
    config = SlaConfig.from_options(ctx.options)
    report = SlaReport()
    handled: set[int] = set()
    consecutive_failures = 0
    while True:
        await ctx.checkpoint()
        batch = await due_ticket_ids(ctx.db, now, config.batch_size, exclude=report.failed_ids)
        batch = [ticket_id for ticket_id in batch if ticket_id not in handled]
        if not batch:  # also stops a loop if a row kept matching without being processed
            return report
        for ticket_id in batch:
            await ctx.checkpoint()
            handled.add(ticket_id)
            try:
                await _process_one(ctx, config, ticket_id, now, report)
            except Exception as exc:
                report.failed_ids.append(ticket_id)
                consecutive_failures += 1
                ctx.log.error(
                    "sla ticket failed", ticket_id=ticket_id, error=repr(exc), exc_info=True
                )
                if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                    raise
            else:
                consecutive_failures = 0


async def due_ticket_ids(
    db: async_sessionmaker[AsyncSession], now: datetime, limit: int, exclude: list[int]
) -> list[int]:
    """Ids of up to `limit` tickets with a due threshold, by their oldest due deadline.

    One query per threshold, each an ordered range scan on its `..._due` index; merging
    four small lists here is cheaper than an OR the database cannot index.
    """
    oldest: dict[int, datetime] = {}
    async with db() as session:
        for sw in STOPWATCHES:
            for pct in THRESHOLDS:
                deadline = tickets.c[f"{sw}_{pct}_deadline"]
                query = (
                    select(tickets.c.id, deadline)
                    .where(
                        tickets.c[f"{sw}_state"] == "running",
                        tickets.c[f"{sw}_{pct}_triggered"] == false(),
                        tickets.c.sla_error.is_(None),
                        deadline <= now,
                    )
                    .order_by(deadline, tickets.c.id)
                    .limit(limit)
                )
                if exclude:
                    query = query.where(tickets.c.id.not_in(exclude))
                for ticket_id, when in (await session.execute(query)).all():
                    if ticket_id not in oldest or when < oldest[ticket_id]:
                        oldest[ticket_id] = when
    return sorted(oldest, key=lambda i: (oldest[i], i))[:limit]


async def _process_one(
    ctx: TaskContext, config: SlaConfig, ticket_id: int, now: datetime, report: SlaReport
) -> None:
    """One ticket, one transaction; a bad ticket is marked in a second one."""
    try:
        result = await _ticket_transaction(ctx.db, config, ticket_id, now)
    except BadTicket as exc:
        if await _mark_bad(ctx.db, ticket_id, str(exc)):
            report.skipped += 1
            ctx.log.warning("sla ticket skipped", ticket_id=ticket_id, reason=str(exc))
        return
    if result is None:
        return
    for due, overrun in result.triggered:
        ctx.log.info(
            "sla threshold triggered",
            ticket_id=ticket_id,
            stopwatch=due.sw,
            threshold=due.pct,
            overrun_s=round(overrun, 3),
        )
    if result.escalated_to:
        ctx.log.info("sla ticket escalated", ticket_id=ticket_id, status=result.escalated_to)
    report.triggered += len(result.triggered)
    report.escalated += bool(result.escalated_to)
    report.emails += result.emails


@conflict_retry("sla ticket")
async def _ticket_transaction(
    db: async_sessionmaker[AsyncSession], config: SlaConfig, ticket_id: int, now: datetime
) -> TicketResult | None:
    """`process_ticket` in a transaction of its own, run again if it lost a race."""
    async with db() as session, session.begin():
        return await process_ticket(session, config, ticket_id, now)


async def process_ticket(
    session: AsyncSession, config: SlaConfig, ticket_id: int, now: datetime
) -> TicketResult | None:
    """Inside the caller's transaction: lock the ticket, then trigger, escalate and notify
    each due threshold. Raises BadTicket for inconsistent data (the caller rolls back).

    The row lock (FOR UPDATE on MariaDB; SQLite's BEGIN IMMEDIATE) makes a second worker
    wait here and then see the flags already set, and each flag is still flipped by a
    conditional UPDATE whose row count decides: 0 means someone else did it.
    """
    query = select(tickets).where(tickets.c.id == ticket_id).with_for_update()
    row = (await session.execute(query)).mappings().first()
    if row is None:
        return None  # deleted since the batch was read
    problem = ticket_problem(row)
    if problem is not None:
        raise BadTicket(problem)
    result = TicketResult()
    status = str(row["status"])
    for due in due_thresholds(row, now):
        overrun = (now - due.deadline).total_seconds()
        if not await _trigger(session, ticket_id, due, overrun):
            continue
        result.triggered.append((due, overrun))
        target = ESCALATION.get(status) if due.pct == 100 else None
        if target is not None and await _escalate(session, ticket_id, status, target):
            status = result.escalated_to = target
        if config.notify[due.pct]:
            await _notify(session, config, row, due, overrun, status)
            result.emails += 1
    return result


def due_thresholds(row: Mapping[Any, Any], now: datetime) -> list[Due]:
    """The running, untriggered thresholds of this row whose deadline is not after `now`,
    in deadline order (75 % before 100 % when both passed while no worker ran)."""
    due = []
    for sw in STOPWATCHES:
        if row[f"{sw}_state"] != "running":
            continue
        for pct in THRESHOLDS:
            deadline = row[f"{sw}_{pct}_deadline"]
            if deadline is not None and not row[f"{sw}_{pct}_triggered"] and deadline <= now:
                due.append(Due(sw, pct, deadline))
    return sorted(due, key=lambda d: (d.deadline, d.pct))


async def _trigger(session: AsyncSession, ticket_id: int, due: Due, overrun: float) -> bool:
    flag = tickets.c[f"{due.sw}_{due.pct}_triggered"]
    statement = (
        update(tickets)
        .where(tickets.c.id == ticket_id, flag == false())
        .where(tickets.c[f"{due.sw}_state"] == "running")
        .values({flag: True, tickets.c[f"{due.sw}_{due.pct}_overrun"]: overrun})
    )
    return rowcount(await session.execute(statement)) == 1


async def _escalate(session: AsyncSession, ticket_id: int, current: str, target: str) -> bool:
    statement = (
        update(tickets)
        .where(tickets.c.id == ticket_id, tickets.c.status == current)
        .values(status=target)
    )
    return rowcount(await session.execute(statement)) == 1


@conflict_retry("sla mark bad ticket")
async def _mark_bad(db: async_sessionmaker[AsyncSession], ticket_id: int, reason: str) -> bool:
    """Record why the ticket is skipped; True only for the worker that recorded it, so
    the warning is logged once across all workers, not every 10 s."""
    statement = (
        update(tickets)
        .where(tickets.c.id == ticket_id, tickets.c.sla_error.is_(None))
        .values(sla_error=reason[:255])
    )
    async with db() as session, session.begin():
        return rowcount(await session.execute(statement)) == 1


async def _notify(
    session: AsyncSession,
    config: SlaConfig,
    row: Mapping[Any, Any],
    due: Due,
    overrun: float,
    status: str,
) -> None:
    """Queue the notification in the caller's transaction (see the module doc)."""
    try:
        await queue_email(session, **notification(config, row, due, overrun, status))
    except ValueError as exc:  # the outbox refused the message: the ticket's data is bad
        raise BadTicket(f"notification refused: {exc}") from exc
