"""The `email` task's verbs on the outbox: claim due rows, record their fate, recover.

Every write about a claimed row is fenced by its `claim_token` and `state = 'sending'`, so
a worker whose claim expired (and whose rows another worker re-planned or took) cannot
overwrite them. Due-ness, leases and retry times use the database's clock
(`cronloop.store.sql.engine.db_now`): rows are written by application hosts and claimed by
worker hosts
whose clocks may disagree. The table, its states and the application's side of the
contract: `tasks/outbox.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import String, and_, delete, or_, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cronloop.sql import conflict_retry, db_now, rowcount
from cronloop.standard.outbox import ERROR, PLANNED, SENDING, SENT, outbox

DELETED = "deleted"  # a Mark state: the row is removed (sent, and not kept)
C = outbox.c


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
# SQLite makes that row an error instead of failing the whole claim.
SEND_COLUMNS = (
    C.id,
    C.message_id,
    C.sender,
    C.recipients,
    C.subject,
    C.body_text,
    C.body_html,
    C.headers,
    C.remaining_retries,
    C.attempts,
)


@conflict_retry("outbox housekeeping")
async def housekeeping(
    db: async_sessionmaker[AsyncSession], keep_sent_days: float, limit: int = 1000
) -> tuple[list[Any], int]:
    """Re-plan rows whose claim expired (a worker died mid-batch), and delete `sent` rows
    older than `keep_sent_days`. Returns (the recovered rows' id/message_id/owner, pruned)."""
    async with db() as session, session.begin():
        now = db_now(session.get_bind().dialect)
        expired = and_(C.state == SENDING, or_(C.lease_until.is_(None), C.lease_until < now))
        stuck = (
            await session.execute(select(C.id, C.message_id, C.owner).where(expired).limit(limit))
        ).all()
        if stuck:
            await session.execute(
                update(outbox)
                .where(C.id.in_([r.id for r in stuck]), expired)
                .values(state=PLANNED, owner=None, claim_token=None, lease_until=None)
            )
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
    return list(stuck), len(old)


@conflict_retry("outbox claim")
async def claim(
    db: async_sessionmaker[AsyncSession],
    *,
    owner: str,
    token: str,
    limit: int,
    lease_s: float,
    skip_locked: bool,
) -> list[Any]:
    """Take up to `limit` due rows, oldest first, for this run: one short transaction.

    The UPDATE re-checks `state = 'planned'`, so two workers that read the same candidates
    (no SKIP LOCKED, or SQLite) can never both take a row; each gets the rows it changed.
    """
    async with db() as session, session.begin():
        dialect = session.get_bind().dialect
        query = (
            select(C.id)
            .where(C.state == PLANNED, C.planned <= db_now(dialect))
            .order_by(C.planned, C.id)
            .limit(limit)
        )
        if skip_locked:
            query = query.with_for_update(skip_locked=True)
        ids = (await session.execute(query)).scalars().all()
        if not ids:
            return []
        await session.execute(
            update(outbox)
            .where(C.id.in_(ids), C.state == PLANNED)
            .values(
                state=SENDING,
                owner=owner[:255],
                claim_token=token,
                lease_until=db_now(dialect, lease_s),
            )
        )
        taken = await session.execute(
            select(*SEND_COLUMNS, type_coerce(C.created, String).label("created"))
            .where(C.claim_token == token, C.state == SENDING)
            .order_by(C.planned, C.id)
        )
        return list(taken.all())


@conflict_retry("outbox message id")
async def assign_message_id(
    db: async_sessionmaker[AsyncSession], token: str, row_id: int, message_id: str
) -> None:
    """Give a directly inserted row its Message-ID before its first send, so a resend
    after a crash carries the same one."""
    async with db() as session, session.begin():
        await session.execute(
            update(outbox)
            .where(C.id == row_id, C.claim_token == token, C.message_id.is_(None))
            .values(message_id=message_id)
        )


@conflict_retry("outbox record")
async def record(db: async_sessionmaker[AsyncSession], token: str, marks: list[Mark]) -> int:
    """Write the fate of attempted rows in one transaction; every write is fenced by the
    claim token, so a worker whose claim expired cannot overwrite a newer owner's row.
    Returns how many rows were written (fewer means claims were lost)."""
    written = 0
    async with db() as session, session.begin():
        now = db_now(session.get_bind().dialect)
        ours = and_(C.claim_token == token, C.state == SENDING)
        released = {"owner": None, "claim_token": None, "lease_until": None}
        gone = [m.row_id for m in marks if m.state == DELETED]
        if gone:
            written += rowcount(await session.execute(delete(outbox).where(C.id.in_(gone), ours)))
        kept = [m.row_id for m in marks if m.state == SENT]
        if kept:
            written += rowcount(
                await session.execute(
                    update(outbox)
                    .where(C.id.in_(kept), ours)
                    .values(
                        state=SENT, sent=now, last_attempt=now, attempts=C.attempts + 1, **released
                    )
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
                values.update(attempts=C.attempts + 1, last_attempt=now)
            if m.remaining is not None:
                values["remaining_retries"] = m.remaining
            if m.state == PLANNED:
                values["planned"] = db_now(session.get_bind().dialect, m.delay_s)
            result = await session.execute(
                update(outbox).where(C.id == m.row_id, ours).values(**values)
            )
            written += rowcount(result)
    return written


@conflict_retry("outbox release")
async def release(db: async_sessionmaker[AsyncSession], token: str, ids: list[int]) -> int:
    """Give back claimed rows that were not sent, due at once, attempts unchanged."""
    if not ids:
        return 0
    async with db() as session, session.begin():
        result = await session.execute(
            update(outbox)
            .where(C.id.in_(ids), C.claim_token == token, C.state == SENDING)
            .values(state=PLANNED, owner=None, claim_token=None, lease_until=None)
        )
    return rowcount(result)
