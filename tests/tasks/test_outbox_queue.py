"""The outbox as a queue table, on SQLite and MariaDB: claimed by cronloop's one claim of
queued work (takeover of expired leases, strikes, quarantine), and the revision that
made it so (`0005_outbox_strikes`) keeping rows in every state."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cronloop.config.settings import Settings
from cronloop.standard import outbox_claims as oc
from cronloop.standard.email import send_queued_email
from cronloop.standard.outbox import outbox, queue_email
from cronloop.standard.outbox_metrics import outbox_gauges
from cronloop.store.sql.engine import create_engine
from cronloop.store.sql.migrate import head_revisions, schema_state, upgrade
from cronloop.testing import make_context, options_of

C = outbox.c
PAST = datetime(2026, 1, 1, tzinfo=UTC)


def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def claim(engine: AsyncEngine, strikes: int = 2, limit: int = 10) -> Any:
    return await oc.claim(
        sessions(engine),
        owner=f"w-{uuid.uuid4().hex[:6]}",
        token=str(uuid.uuid4()),
        limit=limit,
        lease_s=30,
        skip_locked=False,
        quarantine_strikes=strikes,
    )


async def expire(engine: AsyncEngine) -> None:
    """Every claim's lease ran out: its worker was killed."""
    async with engine.begin() as conn:
        await conn.execute(update(outbox).where(C.state == "sending").values(lease_until=PAST))


async def row(engine: AsyncEngine, message_id: str) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(outbox).where(C.message_id == message_id))).one()


async def test_a_row_whose_sender_keeps_dying_is_quarantined(engine: AsyncEngine) -> None:
    """The job queue's rule, through the same code: each takeover is a strike; the one
    that would be the `quarantine_strikes`-th makes the row `error`, saying why and how
    to send it again; the metric counts it as an error."""
    args = {"to": "a@example.org", "subject": "s", "body_text": "b"}
    poison = await queue_email(sessions(engine), **args)
    first = await claim(engine)
    assert [r.message_id for r in first.rows] == [poison] and first.quarantined == []
    assert not first.took_over(oc.OUTBOX_QUEUE, first.rows[0])
    await expire(engine)
    second = await claim(engine)
    assert second.took_over(oc.OUTBOX_QUEUE, second.rows[0])
    r = await row(engine, poison)
    assert (r.state, r.strikes, r.attempts) == ("sending", 1, 2)
    await expire(engine)
    third = await claim(engine)
    assert third.rows == [] and [s for _, s in third.quarantined] == [2]
    r = await row(engine, poison)
    assert (r.state, r.strikes, r.claim_token, r.lease_until) == ("error", 2, None, None)
    assert "2 strikes" in r.last_error and "UPDATE cronloop_outbox" in r.last_error
    gauges = {
        s.labels.get("state"): s.value
        for s in await outbox_gauges(sessions(engine), datetime.now(UTC))
    }
    assert gauges["error"] == 1 and gauges["sending"] == 0
    async with engine.begin() as conn:  # the operator's way back, as the reason says
        await conn.execute(
            text(
                "UPDATE cronloop_outbox SET state = 'planned', strikes = 0, "
                "remaining_retries = NULL WHERE id = :id"
            ),
            {"id": r.id},
        )
    again = await claim(engine)
    assert [x.message_id for x in again.rows] == [poison]


async def test_the_email_task_takes_over_and_sends_a_dead_senders_rows(
    engine: AsyncEngine, settings: Settings, tmp_path: Path
) -> None:
    args = {"to": "a@example.org", "subject": "s", "body_text": "b"}
    ids = [await queue_email(sessions(engine), **args) for _ in range(3)]
    assert len((await claim(engine, limit=2)).rows) == 2  # then that worker died
    await expire(engine)
    ctx = make_context(
        engine,
        name="email",
        settings=settings,
        options=options_of(send_queued_email, file_dir=str(tmp_path)),
    )
    assert await send_queued_email(ctx) == ("sent 3, retry 0, error 0, released 0, recovered 2")
    written = await asyncio.to_thread(lambda: sorted(p.name for p in tmp_path.glob("*.eml")))
    assert written == sorted(f"{m.strip('<>')}.eml" for m in ids)


# -- the revision ---------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    make: Any = request.getfixturevalue("scratch_database")
    url: str = make()
    return url


OLD_ROWS = {
    # message_id: state, claim_token, lease_until (seconds from now), attempts
    "<planned@x.org>": ("planned", None, None, 0),
    "<dead@x.org>": ("sending", "dead-token", -300, 0),
    "<alive@x.org>": ("sending", "alive-token", 3600, 0),
    "<sent@x.org>": ("sent", None, None, 1),
    "<error@x.org>": ("error", None, None, 3),
}


async def test_the_strikes_revision_keeps_rows_in_every_state(fresh_url: str) -> None:
    """A database at the outbox's first revision with rows in every state, written as an
    application does (plain SQL): after the upgrade each row is as it was, with no
    strike; the claim then sends what is due, takes over the dead sender's row, and
    leaves the live claim, the sent and the error rows alone."""
    engine = create_engine(Settings(database_url=fresh_url))
    try:
        await upgrade(engine, "0002_outbox")
        assert (await schema_state(engine)).applied == {"0002_outbox"}
        now = datetime.now(UTC).replace(tzinfo=None)
        async with engine.begin() as conn:
            for message_id, (state, token, lease_s, attempts) in OLD_ROWS.items():
                lease = None if lease_s is None else now + timedelta(seconds=lease_s)
                await conn.execute(
                    text(
                        "INSERT INTO cronloop_outbox (message_id, recipients, subject, "
                        "body_text, created, planned, state, attempts, claim_token, "
                        "lease_until, owner) VALUES (:mid, :rcpt, 'Subject', 'Body', "
                        ":created, :planned, :state, :attempts, :token, :lease, :owner)"
                    ),
                    {
                        "mid": message_id,
                        "rcpt": '{"to": ["a@example.org"]}',
                        "created": _stored(engine, now - timedelta(minutes=10)),
                        "planned": _stored(engine, now - timedelta(minutes=5)),
                        "state": state,
                        "attempts": attempts,
                        "token": token,
                        "lease": None if lease is None else _stored(engine, lease),
                        "owner": None if token is None else "old-worker",
                    },
                )
        await upgrade(engine)
        assert (await schema_state(engine)).applied == head_revisions()
        for message_id, (state, token, _, attempts) in OLD_ROWS.items():
            r = await row(engine, message_id)
            assert (r.state, r.claim_token, r.attempts, r.strikes) == (
                state,
                token,
                attempts,
                0,
            )
            assert (r.subject, r.body_text) == ("Subject", "Body")
        got = await claim(engine)
        taken = {r.message_id: got.took_over(oc.OUTBOX_QUEUE, r) for r in got.rows}
        assert taken == {"<planned@x.org>": False, "<dead@x.org>": True}
        assert (await row(engine, "<alive@x.org>")).claim_token == "alive-token"
    finally:
        await engine.dispose()


def _stored(engine: AsyncEngine, value: datetime) -> Any:
    """A UTC time as the application writes it: SQLite text with six decimals."""
    if engine.dialect.name == "sqlite":
        return value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return value


async def test_one_suspect_per_batch_so_bystanders_are_not_quarantined(
    engine: AsyncEngine, settings: Settings, tmp_path: Path
) -> None:
    """A dead sender's rows are taken over one per batch (each batch's other rows are
    fresh), and the run goes on while some are held back. When that batch's sender dies
    too, only its suspect was struck twice: the fresh rows and the other suspects are
    sent, the suspect is quarantined."""
    args = {"to": "a@example.org", "subject": "s", "body_text": "b"}
    crashed = [await queue_email(sessions(engine), **args) for _ in range(4)]
    assert len((await claim(engine)).rows) == 4  # then that worker died
    await expire(engine)
    fresh = [await queue_email(sessions(engine), **args) for _ in range(3)]
    first = await claim(engine, limit=10)
    assert [r.message_id for r in first.rows] == [crashed[0], *fresh]
    assert first.held_back == 3
    await expire(engine)  # that one died too
    ctx = make_context(
        engine,
        name="email",
        settings=settings,
        options=options_of(send_queued_email, file_dir=str(tmp_path), batch_size=10),
    )
    assert await send_queued_email(ctx) == (
        "sent 6, retry 0, error 0, released 0, recovered 6, quarantined 1"
    )
    async with engine.connect() as conn:
        left = (await conn.execute(select(C.message_id, C.state, C.strikes))).all()
    assert [tuple(r) for r in left] == [(crashed[0], "error", 2)]
