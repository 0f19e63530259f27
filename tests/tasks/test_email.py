"""The `email` task and the outbox, against real SMTP servers, on SQLite and MariaDB."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import String, insert, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cronloop import StopReason, StopRun
from cronloop.config.settings import Settings
from cronloop.standard.email import EmailOptions, retry_delay, send_queued_email
from cronloop.standard.email_transport import eml_name
from cronloop.standard.outbox import outbox, queue_email, queue_from_cli
from cronloop.store.sql.engine import create_engine
from cronloop.testing import make_context, options_of, stop_after_checkpoints

C = outbox.c


def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def queue(engine: AsyncEngine, n: int = 1, **kw: Any) -> list[str]:
    args: dict[str, Any] = {"to": "rcpt@example.org", "subject": "Hello", "body_text": "Body", **kw}
    return [
        await queue_email(sessions(engine), **{**args, "subject": f"{args['subject']} {i}"})
        for i in range(n)
    ]


def context(
    engine: AsyncEngine, settings: Settings, timeout_s: float = 30.0, **options: Any
) -> Any:
    return make_context(
        engine,
        name="email",
        settings=settings,
        timeout_s=timeout_s,
        options=options_of(send_queued_email, **options),
    )


async def run(engine: AsyncEngine, settings: Settings, **options: Any) -> str | None:
    return await send_queued_email(context(engine, settings, **options))


async def rows(engine: AsyncEngine) -> list[Any]:
    """All rows; `created` raw (one test stores garbage there)."""
    columns = [c if c.name != "created" else type_coerce(c, String) for c in outbox.c]
    async with engine.connect() as conn:
        return list((await conn.execute(select(*columns).order_by(C.id))).all())


async def insert_row(engine: AsyncEngine, **values: Any) -> int:
    now = datetime.now(UTC) - timedelta(seconds=1)
    row = {
        "recipients": json.dumps({"to": ["rcpt@example.org"]}),
        "subject": "s",
        "body_text": "b",
        "created": now,
        "planned": now,
        **values,
    }
    async with engine.begin() as conn:
        key = (await conn.execute(insert(outbox).values(**row))).inserted_primary_key
        assert key is not None
        return int(key[0])


async def test_delivers_headers_message_id_and_html_alternative(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    [mid] = [
        await queue_email(
            sessions(engine),
            to=["Ann <ann@example.org>"],
            cc="cc@example.org",
            bcc=["hidden@example.org"],
            subject="Ticket R-1 mis à jour",
            body_text="Grüße, body",
            body_html="<p>html body</p>",
            headers={"Reply-To": "desk@example.org"},
            sender="Service Desk <desk@example.org>",
        )
    ]
    assert await run(engine, settings, **smtp_server.options()) is not None

    [got] = smtp_server.handler.received
    msg = got.message
    assert msg["Message-ID"] == mid and mid.startswith("<") and mid.endswith("@example.org>")
    assert msg["From"] == "Service Desk <desk@example.org>"
    assert msg["To"] == "Ann <ann@example.org>" and msg["Cc"] == "cc@example.org"
    assert msg["Bcc"] is None and msg["Reply-To"] == "desk@example.org"
    assert msg["Subject"] == "Ticket R-1 mis à jour" and msg["Date"]
    assert got.mail_from == "desk@example.org"
    assert got.rcpt_tos == ["ann@example.org", "cc@example.org", "hidden@example.org"]
    assert msg.get_content_type() == "multipart/alternative"
    parts = {p.get_content_type(): p.get_content().strip() for p in msg.iter_parts()}
    assert parts == {"text/plain": "Grüße, body", "text/html": "<p>html body</p>"}
    assert await rows(engine) == []  # iTop's rule: deleted once sent


async def test_keep_sent_days_keeps_sent_rows_then_prunes(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    await queue(engine, 2)
    await run(engine, settings, **smtp_server.options(keep_sent_days=1.0))
    kept = await rows(engine)
    assert [(r.state, r.attempts, r.claim_token) for r in kept] == [("sent", 1, None)] * 2
    assert all(r.sent is not None and r.last_attempt == r.sent for r in kept)
    async with engine.begin() as conn:
        await conn.execute(
            update(outbox)
            .where(C.id == kept[0].id)
            .values(sent=datetime.now(UTC) - timedelta(days=2))
        )
    await run(engine, settings, **smtp_server.options(keep_sent_days=1.0))
    assert [r.id for r in await rows(engine)] == [kept[1].id]
    assert len(smtp_server.handler.received) == 2


async def test_reuses_one_connection_per_sender_across_batches(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    await queue(engine, 20)
    await run(engine, settings, **smtp_server.options(concurrency=2, batch_size=5))
    assert len(smtp_server.handler.received) == 20
    assert len(smtp_server.handler.peers) == 2  # 20 messages, 4 batches, 2 connections


async def test_concurrency_is_bounded_and_used(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    smtp_server.handler.delay_s = 0.03
    await queue(engine, 9)
    await run(engine, settings, **smtp_server.options(concurrency=3))
    assert smtp_server.handler.max_active == 3
    assert len(set(smtp_server.handler.message_ids())) == 9


async def test_4xx_is_retried_later_and_5xx_is_an_error_at_once(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    await queue(engine, 1, to="later@example.org")
    await queue(engine, 1, to="nobody@example.org")
    replies = {
        "later@example.org": "451 4.3.0 try again later",
        "nobody@example.org": "550 5.1.1 no such user",
    }
    smtp_server.handler.rcpt_reply = replies.get
    await run(engine, settings, **smtp_server.options())
    later, nobody = await rows(engine)
    assert (later.state, later.remaining_retries, later.attempts, later.last_error_code) == (
        "planned",
        2,
        1,
        451,
    )
    assert "try again later" in later.last_error and later.claim_token is None
    assert later.planned - later.last_attempt == timedelta(seconds=600)
    assert (nobody.state, nobody.attempts, nobody.last_error_code) == ("error", 1, 550)
    assert "no such user" in nobody.last_error
    await run(engine, settings, **smtp_server.options())  # not due yet: nothing happens
    assert [(r.state, r.attempts) for r in await rows(engine)] == [("planned", 1), ("error", 1)]


async def test_550_after_data_is_an_error_at_once(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    await queue(engine, 1)
    smtp_server.handler.data_reply = "554 5.6.0 content rejected"
    await run(engine, settings, **smtp_server.options())
    [row] = await rows(engine)
    assert (row.state, row.last_error_code, row.remaining_retries) == ("error", 554, 3)


async def test_exponential_retries_then_error(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    await queue(engine, 1)
    smtp_server.handler.rcpt_reply = lambda _: "452 4.2.2 mailbox full"
    options = smtp_server.options(retry_delay_s=10.0, exponential_delay=True, max_retries=3)
    delays, states = [], []
    for _ in range(4):
        await run(engine, settings, **options)
        [row] = await rows(engine)
        states.append((row.state, row.remaining_retries, row.attempts))
        delays.append((row.planned - row.last_attempt).total_seconds())
        async with engine.begin() as conn:  # make the retry due now instead of waiting
            await conn.execute(
                update(outbox).values(planned=datetime.now(UTC) - timedelta(seconds=1))
            )
    assert states == [("planned", 2, 1), ("planned", 1, 2), ("planned", 0, 3), ("error", 0, 4)]
    assert delays[:3] == [10.0, 20.0, 40.0]
    assert len(smtp_server.handler.received) == 0


def test_retry_delay_arithmetic() -> None:
    assert [retry_delay(n, 600, False) for n in (1, 2, 5)] == [600, 600, 600]
    assert [retry_delay(n, 600, True) for n in (1, 2, 3, 4)] == [600, 1200, 2400, 4800]
    assert retry_delay(200, 600, True) == 30 * 86400  # capped, no overflow


async def test_unreachable_server_is_transient(
    engine: AsyncEngine, settings: Settings, closed_port: int
) -> None:
    await queue(engine, 2)
    await run(
        engine,
        settings,
        transport="smtp",
        smtp_host="127.0.0.1",
        smtp_port=closed_port,
        smtp_timeout_s=2.0,
    )
    for row in await rows(engine):
        assert (row.state, row.remaining_retries, row.attempts) == ("planned", 2, 1)
        assert "connect" in row.last_error and row.last_error_code is None


async def test_deadline_stops_between_messages_and_gives_back_the_rest(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    smtp_server.handler.delay_s = 0.04
    queued = await queue(engine, 12)
    ctx = context(engine, settings, timeout_s=0.15, **smtp_server.options(concurrency=2))
    with pytest.raises(StopRun) as stop:
        await send_queued_email(ctx)
    assert stop.value.reason == StopReason.DEADLINE
    first = smtp_server.handler.message_ids()
    left = await rows(engine)
    assert 0 < len(first) < 12 and len(left) == 12 - len(first)
    assert {r.message_id for r in left}.isdisjoint(first)
    assert all((r.state, r.attempts, r.claim_token) == ("planned", 0, None) for r in left)
    await run(engine, settings, **smtp_server.options(concurrency=2))
    assert sorted(smtp_server.handler.message_ids()) == sorted(queued)  # each exactly once
    assert await rows(engine) == []


async def test_shutdown_at_a_checkpoint_releases_unsent(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    await queue(engine, 6)
    ctx = context(engine, settings, **smtp_server.options(concurrency=1))
    # Checkpoints: the run's loop (1), before send 1 (2), before send 2 (3), and the 4th
    # stops the sender before its third message.
    stop_after_checkpoints(ctx, 4)
    with pytest.raises(StopRun):
        await send_queued_email(ctx)
    assert len(smtp_server.handler.received) == 2
    assert [(r.state, r.claim_token) for r in await rows(engine)] == [("planned", None)] * 4


async def test_cancelled_mid_send_releases_the_batch(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    smtp_server.handler.gate = threading.Event()
    await queue(engine, 3)
    job = asyncio.ensure_future(run(engine, settings, **smtp_server.options(concurrency=1)))
    assert await asyncio.to_thread(smtp_server.handler.data_started.wait, 5)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(job, 0.9)  # no QUIT (1 s timeout) on the broken session
    smtp_server.handler.gate.set()
    assert [(r.state, r.claim_token) for r in await rows(engine)] == [("planned", None)] * 3


async def test_expired_claims_are_recovered_and_sent_once(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    past, future = datetime.now(UTC) - timedelta(minutes=5), datetime.now(UTC) + timedelta(hours=1)
    crashed = await insert_row(
        engine,
        message_id="<crashed@x.org>",
        state="sending",
        claim_token="dead",
        owner="gone:1",
        lease_until=past,
    )
    busy = await insert_row(
        engine,
        message_id="<busy@x.org>",
        state="sending",
        claim_token="alive",
        owner="other:2",
        lease_until=future,
    )
    with structlog.testing.capture_logs() as logs:
        await run(engine, settings, **smtp_server.options())
    assert smtp_server.handler.message_ids() == ["<crashed@x.org>"]
    left = [(r.id, r.state, r.claim_token) for r in await rows(engine)]
    assert left == [(busy, "sending", "alive")]
    assert any(
        e["log_level"] == "warning" and e.get("count") == 1 and crashed in [r[0] for r in e["rows"]]
        for e in logs
    )


async def test_two_concurrent_runs_never_send_twice(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    smtp_server.handler.delay_s = 0.002
    queued = await queue(engine, 40)
    other = create_engine(settings)
    try:
        options = smtp_server.options(concurrency=2, batch_size=4)
        results = await asyncio.gather(
            run(engine, settings, **options), run(other, settings, **options)
        )
    finally:
        await other.dispose()
    got = smtp_server.handler.message_ids()
    assert len(got) == 40 and sorted(got) == sorted(queued)
    assert all(r is not None for r in results)
    assert await rows(engine) == []


async def test_bad_rows_are_marked_error_and_the_rest_sent(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    bad = {
        "not json": await insert_row(engine, recipients="not json"),
        "no address": await insert_row(engine, recipients='{"to": [], "cc": []}'),
        "not one valid": await insert_row(engine, recipients='{"to": ["a@x.org, b@y.org"]}'),
        "line break": await insert_row(engine, subject="two\nlines"),
        "set by cronloop": await insert_row(engine, headers='{"Bcc": "spy@example.org"}'),
    }
    if engine.dialect.name == "sqlite":  # only SQLite accepts any text in a timestamp column
        bad["not a timestamp"] = await insert_row(engine)
        async with engine.begin() as conn:
            await conn.exec_driver_sql(
                "UPDATE cronloop_outbox SET created = 'garbage' "
                f"WHERE id = {bad['not a timestamp']}"
            )
    good = await queue(engine, 2)
    direct = await insert_row(engine, recipients='["direct@example.org"]')  # no message_id
    with structlog.testing.capture_logs() as logs:
        await run(engine, settings, **smtp_server.options(keep_sent_days=1.0))
    by_id = {r.id: r for r in await rows(engine)}
    for reason, row_id in bad.items():
        row = by_id[row_id]
        assert (row.state, row.attempts, row.claim_token) == ("error", 0, None)
        assert reason in row.last_error
        assert any(e.get("row_id") == row_id and e["log_level"] == "warning" for e in logs)
    assert by_id[direct].state == "sent" and by_id[direct].message_id
    assert sorted(smtp_server.handler.message_ids()) == sorted([*good, by_id[direct].message_id])


async def test_planned_in_the_future_waits(
    engine: AsyncEngine, settings: Settings, smtp_server: Any
) -> None:
    await queue(engine, 1, planned=datetime.now(UTC) + timedelta(hours=1))
    assert await run(engine, settings, **smtp_server.options()) is None
    assert [r.state for r in await rows(engine)] == ["planned"]


async def test_file_transport_writes_atomically_and_overwrites(
    engine: AsyncEngine, settings: Settings, tmp_path: Path
) -> None:
    [mid] = await queue(engine, 1, body_html="<b>hi</b>", bcc="b@example.org")
    await run(engine, settings, file_dir=str(tmp_path / "eml"), keep_sent_days=1.0)
    async with engine.begin() as conn:  # as if a crash made it send again
        await conn.execute(update(outbox).values(state="planned"))
    await run(engine, settings, file_dir=str(tmp_path / "eml"), keep_sent_days=1.0)
    tmp_path = tmp_path / "eml"
    assert [p.name for p in tmp_path.iterdir()] == [eml_name(mid)]
    msg = message_from_bytes((tmp_path / eml_name(mid)).read_bytes(), policy=policy.default)
    assert msg["Message-ID"] == mid and msg["To"] == "rcpt@example.org"
    assert "b@example.org" in msg["X-Cronloop-Envelope-To"]
    assert eml_name("<a/../b@x>") != eml_name("<a_.._b@x>")


async def test_default_file_dir_is_under_the_state_directory(
    engine: AsyncEngine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    [mid] = await queue(engine, 1)
    await run(engine, settings)
    assert (tmp_path / "outbox-eml" / eml_name(mid)).is_file()


@pytest.mark.parametrize("tls_smtp_server", ["starttls", "tls"], indirect=True)
async def test_tls_and_auth(
    engine: AsyncEngine,
    settings: Settings,
    tls_smtp_server: Any,
    tls_files: tuple[Path, Path],
    request: pytest.FixtureRequest,
    smtp_password: str,
) -> None:
    mode = request.node.callspec.params["tls_smtp_server"]
    await queue(engine, 2)
    await run(
        engine,
        settings,
        **tls_smtp_server.options(
            smtp_tls=mode,
            smtp_ca_file=str(tls_files[0]),
            smtp_username="mailer",
            smtp_password=smtp_password,
            concurrency=1,
        ),
    )
    assert len(tls_smtp_server.handler.received) == 2
    assert len(tls_smtp_server.handler.logins) == 1  # one login, connection reused
    assert await rows(engine) == []


async def test_password_never_in_logs_nor_rows(
    engine: AsyncEngine, settings: Settings, auth_smtp_server: Any, smtp_password: str
) -> None:
    secret = smtp_password
    await queue(engine, 1)
    with structlog.testing.capture_logs() as logs:
        await run(
            engine,
            settings,
            **auth_smtp_server.options(smtp_username="mailer", smtp_password=secret + "-wrong"),
        )
        with pytest.raises(ValueError) as bad:
            await run(
                engine,
                settings,
                **auth_smtp_server.options(transport="nonsense", smtp_password=secret),
            )
    assert secret not in str(bad.value)
    [row] = await rows(engine)
    assert row.state == "planned" and "535" in row.last_error  # auth refusal: transient
    assert logs and secret not in repr(logs) and secret not in repr(row._mapping)
    assert secret not in repr(EmailOptions.parse({"smtp_password": secret}))
    assert secret not in repr(EmailOptions.parse({"smtp_password": secret}).smtp())


async def test_queue_email_validates(engine: AsyncEngine) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"to": "not an address"}, "to:"),
        ({"to": "a@x.org, b@y.org"}, "not one valid"),
        ({"to": [], "cc": ()}, "no recipients"),
        ({"cc": ["ok@x.org", "bad@"]}, "cc:"),
        ({"subject": "a\r\nBcc: x@y.org"}, "subject"),
        ({"headers": {"Message-ID": "<x@y>"}}, "set by cronloop"),
        ({"headers": {"X-Ok": "a\nb"}}, "line breaks"),
        ({"planned": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"sender": "nobody"}, "sender"),
    ]
    for override, message in cases:
        args: dict[str, Any] = {"to": "ok@example.org", "subject": "s", "body_text": "b"}
        with pytest.raises(ValueError, match=message):
            await queue_email(sessions(engine), **{**args, **override})
    assert await rows(engine) == []


async def test_queue_joins_the_callers_transaction(engine: AsyncEngine) -> None:
    async with sessions(engine)() as session:
        await queue_email(session, to="a@example.org", subject="s", body_text="b")
        await session.rollback()  # the caller's change failed: no email either
    assert await rows(engine) == []
    mid = await queue_from_cli(
        engine, to=["a@example.org"], subject="test", body="b", html_file=None
    )
    [row] = await rows(engine)
    assert (row.message_id, row.state, row.remaining_retries) == (mid, "planned", None)
    assert json.loads(row.recipients) == {"to": ["a@example.org"], "cc": [], "bcc": []}


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="transport"):
        EmailOptions.parse({"transport": "pigeon"})
    with pytest.raises(ValueError, match="concurrency"):
        EmailOptions.parse({"concurrency": 0})
