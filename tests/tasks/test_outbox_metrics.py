"""The outbox's gauges for /metrics, on SQLite and MariaDB: messages per state and the
age of the oldest message due."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from cronloop import GaugeSample
from cronloop.standard.outbox import outbox, queue_email
from cronloop.standard.outbox_metrics import outbox_gauges


def values(samples: Iterable[GaugeSample]) -> dict[tuple[str, str], float]:
    return {(s.name, s.labels.get("state", "")): s.value for s in samples}


async def test_counts_per_state_and_the_oldest_waiting_message(engine: AsyncEngine) -> None:
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    now = datetime.now(UTC).replace(microsecond=0)
    empty = values(await outbox_gauges(sessions, now))
    assert empty[("cronloop_outbox_messages", "planned")] == 0
    assert empty[("cronloop_outbox_oldest_planned_age_seconds", "")] == 0

    args = {"to": "a@example.org", "subject": "s", "body_text": "b"}
    await queue_email(sessions, **args, planned=now - timedelta(minutes=20))
    await queue_email(sessions, **args, planned=now - timedelta(minutes=5))
    await queue_email(sessions, **args, planned=now + timedelta(hours=1))  # not due yet
    failed = await queue_email(sessions, **args)
    async with sessions() as session:
        await session.execute(
            update(outbox).where(outbox.c.message_id == failed).values(state="error")
        )
        await session.commit()

    found = values(await outbox_gauges(sessions, now))
    assert found[("cronloop_outbox_messages", "planned")] == 3
    assert found[("cronloop_outbox_messages", "error")] == 1
    assert found[("cronloop_outbox_messages", "sent")] == 0
    assert found[("cronloop_outbox_oldest_planned_age_seconds", "")] == 20 * 60
