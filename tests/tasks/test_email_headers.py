"""Header injection through encoded words (issue 10, item 3), on SQLite and MariaDB.

Rows are inserted the way an application may insert them (straight into the table, past
`queue_email`'s checks), sent through the real SMTP server (aiosmtpd) and the file
transport, and what arrived is parsed: no injected header, the body intact, the bad row
`error` with the reason.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cronloop.config.settings import Settings
from cronloop.standard.email import send_queued_email
from cronloop.standard.email_headers import check_header_value, check_serialised, neutralise
from cronloop.standard.outbox import outbox, queue_email
from cronloop.standard.sla import process_due
from cronloop.standard.sla import sla as sla_task
from cronloop.standard.tickets import create_ticket
from cronloop.testing import make_context, options_of

C = outbox.c
EVIL = "x@evil.example"
INJECT_Q = "=?utf-8?q?Invoice=0D=0ABcc:_x@evil.example?="
INJECT_FORGED_BODY = "=?utf-8?q?Invoice=0D=0A=0D=0AForged_body?="
INJECT_B = "=?UTF-8?B?SW52b2ljZQ0KQmNjOiB4QGV2aWwuZXhhbXBsZQ==?="  # Invoice\r\nBcc: x@...
INJECT_TWICE = (
    "=?utf-8?b?PT91dGYtOD9xP0ludm9pY2U9MEQ9MEFCY2M6X3hAZXZpbC5leGFtcGxlPz0=?="  # b(q(..))
)
BODY = "The real body.\nLine two.\n"

# field -> the row columns that carry the attack (each inserted straight into the table)
ATTACKS: dict[str, dict[str, Any]] = {
    "subject q": {"subject": INJECT_Q},
    "subject q lower case, forged body": {"subject": INJECT_FORGED_BODY.replace("?q?", "?Q?")},
    "subject b": {"subject": INJECT_B},
    "subject inside a word": {"subject": "Re:" + INJECT_Q + "tail"},
    "subject C1 NEL": {"subject": "=?utf-8?q?Invoice=C2=85Bcc:_x@evil.example?="},
    "subject U+2028": {"subject": "=?utf-8?q?Invoice=E2=80=A8Bcc:_x@evil.example?="},
    "subject escape": {"subject": "Invoice \x1b[31m red"},
    "subject encoded twice": {"subject": INJECT_TWICE},
    "custom header": {"headers": json.dumps({"X-Ticket": INJECT_Q})},
    "reply-to display name": {
        "headers": json.dumps({"Reply-To": f'"{INJECT_Q}" <desk@example.org>'})
    },
    "from display name": {"sender": f"{INJECT_Q} <desk@example.org>"},
    "to display name": {"recipients": json.dumps({"to": [f"{INJECT_Q} <ann@example.org>"]})},
    "cc display name": {
        "recipients": json.dumps(
            {"to": ["ann@example.org"], "cc": [f"{INJECT_B} <cc@example.org>"]}
        )
    },
    "message id": {"message_id": "<a@b>\r\nBcc: x@evil.example"},
}


def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def insert_row(engine: AsyncEngine, **values: Any) -> int:
    now = datetime.now(UTC) - timedelta(seconds=1)
    row = {
        "recipients": json.dumps({"to": ["rcpt@example.org"]}),
        "subject": "Hello",
        "body_text": BODY,
        "created": now,
        "planned": now,
        **values,
    }
    async with engine.begin() as conn:
        key = (await conn.execute(insert(outbox).values(**row))).inserted_primary_key
        assert key is not None
        return int(key[0])


async def run(engine: AsyncEngine, settings: Settings, **options: Any) -> str | None:
    ctx = make_context(
        engine,
        name="email",
        settings=settings,
        options=options_of(send_queued_email, keep_sent_days=1.0, **options),
    )
    return await send_queued_email(ctx)


async def states(engine: AsyncEngine) -> dict[int, tuple[str, str | None]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(C.id, C.state, C.last_error))
        return {r.id: (r.state, r.last_error) for r in result}


def assert_clean(message: EmailMessage, body: str = BODY) -> None:
    """Exactly the headers the builder sets, nothing from an attacker, the body intact."""
    names = [n.lower() for n in message]
    assert "bcc" not in names, names
    assert EVIL not in str(message.get("To", "")) + str(message.get("Cc", ""))
    for name in message:
        assert "\r" not in str(message[name]) and "\n" not in str(message[name]), name
    assert message.get_content().replace("\r\n", "\n") == body


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_smtp_refuses_rows_whose_headers_decode_to_a_line_break(
    engine: AsyncEngine, settings: Settings, smtp_server: Any, attack: str
) -> None:
    bad = await insert_row(engine, **ATTACKS[attack])
    good = await insert_row(engine, subject="Fine")

    await run(engine, settings, **smtp_server.options())

    got = await states(engine)
    assert got[good][0] == "sent"
    state, error = got[bad]
    assert state == "error" and error is not None and error.startswith("bad row: ")
    assert any(w in error for w in ("line break", "control character", "message_id")), error
    [received] = smtp_server.handler.received
    assert received.rcpt_tos == ["rcpt@example.org"]  # the attacker got nothing
    assert received.message["Subject"] == "Fine"
    assert_clean(received.message)


@pytest.mark.parametrize("attack", ["subject q", "subject b", "custom header", "to display name"])
async def test_file_transport_refuses_them_too(
    engine: AsyncEngine, settings: Settings, tmp_path: Path, attack: str
) -> None:
    bad = await insert_row(engine, **ATTACKS[attack])
    good = await insert_row(engine, subject="Fine")

    await run(engine, settings, file_dir=str(tmp_path / "eml"))

    got = await states(engine)
    assert got[good][0] == "sent" and got[bad][0] == "error"
    [eml] = list((tmp_path / "eml").iterdir())
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Subject"] == "Fine"
    assert message["X-Cronloop-Envelope-To"] == "rcpt@example.org"
    assert_clean(message)


async def test_safe_encoded_words_and_unicode_still_go_through(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    await insert_row(
        engine,
        subject="=?utf-8?q?Facture_r=C3=A9gl=C3=A9e?= ✓",
        sender="=?utf-8?q?Andr=C3=A9?= <desk@example.org>",
        headers=json.dumps({"X-Note": "tab-free ✓"}),
    )
    await run(engine, settings, **smtp_server.options())
    [received] = smtp_server.handler.received
    assert received.message["Subject"] == "Facture réglée ✓"
    assert received.message["From"] == "André <desk@example.org>"
    assert received.message["X-Note"] == "tab-free ✓"
    assert_clean(received.message)


@pytest.mark.parametrize(
    "kw",
    [
        {"subject": INJECT_Q},
        {"subject": INJECT_B},
        {"headers": {"X-Ticket": INJECT_Q}},
        {"to": f"{INJECT_Q} <ann@example.org>"},
        {"sender": f"{INJECT_B} <desk@example.org>"},
        {"cc": ["=?utf-8?q?A=00?= <cc@example.org>"]},
    ],
)
async def test_queue_email_refuses_them_at_once(engine: AsyncEngine, kw: dict[str, Any]) -> None:
    args: dict[str, Any] = {"to": "rcpt@example.org", "subject": "s", "body_text": "b", **kw}
    with pytest.raises(ValueError, match=r"line break|control character"):
        await queue_email(sessions(engine), **args)
    async with engine.connect() as conn:
        assert (await conn.execute(select(C.id))).all() == []


async def test_sla_ticket_titles_are_neutralised_and_the_notification_sent(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    """End users write titles: the notification still goes out (and the ticket escalates),
    with no header of theirs."""
    t0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    sla_ctx = make_context(engine, name="sla", options=options_of(sla_task))
    await create_ticket(
        sla_ctx.db,
        ref="R-000001",
        title=f"{INJECT_Q} {INJECT_FORGED_BODY}\x1b[2J",
        priority=2,
        team_email="team@example.org",
        agent_email=None,
        status="new",
        tto_goal_s=3600,
        ttr_goal_s=86400,
        now=t0,
    )
    report = await process_due(sla_ctx, t0 + timedelta(minutes=46))
    assert report.triggered == 1 and report.skipped == 0

    await run(engine, settings, **smtp_server.options())

    [received] = smtp_server.handler.received
    assert received.rcpt_tos == ["team@example.org"]
    subject = str(received.message["Subject"])
    assert "Bcc" in subject and "= ?utf-8?q?Invoice" in subject  # shown, not obeyed
    names = [n.lower() for n in received.message]
    assert "bcc" not in names and "\x1b" not in subject
    assert received.message.get_content().startswith('Ticket R-000001 "=?utf-8?q?Invoice')


@pytest.mark.parametrize(
    "value",
    [
        INJECT_Q,
        INJECT_B,
        INJECT_TWICE,
        "=?utf-8?b?SW52b2ljZQ0KQmNj?=",  # no padding
        "=?utf-8?B?SW52b2l jZQ0K?=",  # junk inside
        "=?iso-8859-1?q?a=85b?=",  # C1 in Latin-1 is still NEL
        "=?unknown-charset?q?a=0Ab?=",
        "=?utf-8*en?q?a=0Db?=",  # RFC 2231 language tag
        "plain\ttab",
        "nul\x00",
        "del\x7f",
        "line\u2029sep",
    ],
)
def test_every_encoding_of_a_control_character_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="Subject: contains"):
        check_header_value(value, "Subject")


@pytest.mark.parametrize(
    "value", ["Facture réglée", "=?utf-8?q?r=C3=A9gl=C3=A9e?=", "=?utf-8?q?=C4=80?=", "a=?b", ""]
)
def test_safe_values_are_accepted(value: str) -> None:
    assert check_header_value(value, "Subject") == value


def test_neutralise_leaves_nothing_to_decode_or_refuse() -> None:
    out = neutralise(f"{INJECT_Q}\r\n\x00 =?=?x\u2028y")
    assert check_header_value(out, "Subject") == out
    assert "=?" not in out and out.startswith("= ?utf-8?q?Invoice=0D=0ABcc")


def test_a_message_whose_written_headers_differ_is_refused() -> None:
    """The last line of defence, whatever the interpreter: a header the generator would
    write as two is caught by reading the written message back."""
    message = EmailMessage()
    message["Subject"] = "fine"
    message.set_content("body")
    check_serialised(message)
    message.set_raw("X-Raw", "a\r\nBcc: x@evil.example")  # past every check
    with pytest.raises(ValueError, match="other headers"):
        check_serialised(message)
