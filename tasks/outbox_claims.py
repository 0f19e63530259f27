"""The `email` task's verbs on the outbox: claim due rows, record their fate, prune.

Claiming is cronloop's one claim of queued work (`cronloop.sql.acquire_queued`, the job
queue's): the outbox is a queue table (`OUTBOX_QUEUE`: due at `planned`, fenced by
`claim_token`, `sending` while leased). A claim also takes over rows whose lease expired
(a worker died mid-batch), counting a strike against each; a row whose sender was lost
`quarantine_strikes` times becomes `error` with the reason instead of being sent again.
Every write about a claimed row is fenced by its `claim_token` and `state = 'sending'`
(`OUTBOX_QUEUE.held`), so a worker whose claim expired cannot overwrite a newer owner's
row. Due-ness, leases and retry times use the database's clock (`cronloop.sql.db_now`):
rows are written by application hosts and claimed by worker hosts whose clocks may
disagree. The table, its states and the application's side of the contract:
`tasks/outbox.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, delete, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cronloop.sql import Acquired, QueueShape, acquire_queued, conflict_retry, db_now, rowcount
from cronloop.standard.outbox import ERROR, PLANNED, SENDING, SENT, outbox

DELETED = "deleted"  # a Mark state: the row is removed (sent, and not kept)
C = outbox.c

#: the outbox as a queue table: what `acquire_queued` claims, how its writes are fenced
OUTBOX_QUEUE = QueueShape(
    outbox,
    due="planned",
    token="claim_token",
    running=SENDING,
    quarantined=ERROR,  # the table's states are the application's contract
    order=("planned", "id"),
    retry_hint=(
        "UPDATE cronloop_outbox SET state = 'planned', strikes = 0, remaining_retries = NULL "
        "WHERE id = ..."
    ),
)


@dataclass(frozen=True)
class Mark:
    """What to write for one claimed row once its fate is known."""

    row_id: int
    state: str  # DELETED, SENT, PLANNED (retry later) or ERROR
    attempted: bool = True  # False for a bad row: nothing was sent, no attempt counted
    remaining: int | None = None
    delay_s: float = 0.0
    error: str | None = None
    code: int | None = None


# What a sender reads; `created` comes raw, so a malformed timestamp written directly on
# SQLite makes that row an error instead of failing the whole claim. `attempts` is the
# count before this claim (the claim counts one more).
SEND_COLUMNS = (
    C.message_id,
    C.sender,
    C.recipients,
    C.subject,
    C.body_text,
    C.body_html,
    C.headers,
    C.remaining_retries,
    C.attempts,
    C.owner,
    type_coerce(C.created, String).label("created"),
)


@conflict_retry("outbox housekeeping")
async def housekeeping(
    db: async_sessionmaker[AsyncSession], keep_sent_days: float, limit: int = 1000
) -> int:
    """Delete `sent` rows older than `keep_sent_days`; how many. (Rows a dead worker left
    `sending` are taken over by the next claim.)"""
    async with db() as session, session.begin():
        cutoff = db_now(session.get_bind().dialect, -keep_sent_days * 86400)
        old = (
            (
                await session.execute(
                    select(C.id).where(C.state == SENT, C.sent <= cutoff).limit(limit)
                )
            )
            .scalars()
            .all()
        )
        if old:
            await session.execute(delete(outbox).where(C.id.in_(old), C.state == SENT))
    return len(old)


@conflict_retry("outbox claim")
async def claim(
    db: async_sessionmaker[AsyncSession],
    *,
    owner: str,
    token: str,
    limit: int,
    lease_s: float,
    skip_locked: bool,
    quarantine_strikes: int = 0,
) -> Acquired:
    """Take up to `limit` due rows, oldest first, for this run, and the rows whose lease
    expired (`Acquired.took_over`): one short transaction. Two workers never both take a
    row (the claim's UPDATE re-checks the conditions). At most one row of a batch lost
    its sender before (a suspect; the rest are `Acquired.held_back` for the next
    batches): a message that kills its sender takes no other suspect down with it, so
    the bystanders of its last crash are never quarantined for it."""
    async with db() as session, session.begin():
        return await acquire_queued(
            session,
            session.get_bind().dialect,
            OUTBOX_QUEUE,
            columns=SEND_COLUMNS,
            limit=limit,
            owner=owner,
            token=token,
            lease_s=lease_s,
            skip_locked=skip_locked,
            quarantine_strikes=quarantine_strikes,
            suspects=1,
        )


@conflict_retry("outbox message id")
async def assign_message_id(
    db: async_sessionmaker[AsyncSession], token: str, row_id: int, message_id: str
) -> None:
    """Give a directly inserted row its Message-ID before its first send, so a resend
    after a crash carries the same one."""
    async with db() as session, session.begin():
        await session.execute(
            update(outbox)
            .where(OUTBOX_QUEUE.held([row_id], token), C.message_id.is_(None))
            .values(message_id=message_id)
        )


@conflict_retry("outbox record")
async def record(db: async_sessionmaker[AsyncSession], token: str, marks: list[Mark]) -> int:
    """Write the fate of attempted rows in one transaction; every write is fenced by the
    claim token, so a worker whose claim expired cannot overwrite a newer owner's row.
    Returns how many rows were written (fewer means claims were lost)."""
    written = 0
    released = OUTBOX_QUEUE.no_lease()
    async with db() as session, session.begin():
        now = db_now(session.get_bind().dialect)
        gone = [m.row_id for m in marks if m.state == DELETED]
        if gone:
            written += rowcount(
                await session.execute(delete(outbox).where(OUTBOX_QUEUE.held(gone, token)))
            )
        kept = [m.row_id for m in marks if m.state == SENT]
        if kept:
            written += rowcount(
                await session.execute(
                    update(outbox)
                    .where(OUTBOX_QUEUE.held(kept, token))
                    .values(state=SENT, sent=now, last_attempt=now, **released)
                )
            )
        for m in marks:
            if m.state not in (PLANNED, ERROR):
                continue
            values: dict[str, Any] = {
                "state": m.state,
                "last_error": m.error,
                "last_error_code": m.code,
                **released,
            }
            if m.attempted:
                values["last_attempt"] = now
            else:  # the claim counted an attempt that never was
                values["attempts"] = C.attempts - 1
            if m.remaining is not None:
                values["remaining_retries"] = m.remaining
            if m.state == PLANNED:
                values["planned"] = db_now(session.get_bind().dialect, m.delay_s)
            result = await session.execute(
                update(outbox).where(OUTBOX_QUEUE.held([m.row_id], token)).values(**values)
            )
            written += rowcount(result)
    return written


@conflict_retry("outbox release")
async def release(db: async_sessionmaker[AsyncSession], token: str, ids: list[int]) -> int:
    """Give back claimed rows that were not sent, due at once, the claim's attempt not
    counted."""
    if not ids:
        return 0
    async with db() as session, session.begin():
        result = await session.execute(
            update(outbox)
            .where(OUTBOX_QUEUE.held(ids, token))
            .values(state=PLANNED, attempts=C.attempts - 1, **OUTBOX_QUEUE.no_lease())
        )
    return rowcount(result)
