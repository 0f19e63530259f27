"""The outbox's backlog for /metrics (entry point `cronloop.gauges`: `outbox`).

`cronloop_outbox_messages{state}`: messages per state; and
`cronloop_outbox_oldest_planned_age_seconds`: how long the oldest message due to be sent
has waited (0 when none waits). One grouped count and one MIN per read, on the
`(state, planned)` index. It never knows the web server.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from cronloop import GaugeSample
from cronloop.standard.outbox import ERROR, PLANNED, SENDING, SENT, outbox

STATES = (PLANNED, SENDING, SENT, ERROR)


async def outbox_gauges(sessions: Any, now: datetime) -> Iterable[GaugeSample]:
    async with sessions() as session:
        counts = dict(
            (
                await session.execute(select(outbox.c.state, func.count()).group_by(outbox.c.state))
            ).all()
        )
        oldest = await session.scalar(
            select(func.min(outbox.c.planned)).where(
                outbox.c.state == PLANNED, outbox.c.planned <= now
            )
        )
    samples = [
        GaugeSample(
            "cronloop_outbox_messages",
            "Messages in the outbox by state, from the outbox table.",
            float(counts.get(state, 0)),
            {"state": state},
        )
        for state in STATES
    ]
    age_s = (now - oldest).total_seconds() if oldest is not None else 0.0
    samples.append(
        GaugeSample(
            "cronloop_outbox_oldest_planned_age_seconds",
            "How long the oldest message due to be sent has waited, from the outbox table.",
            max(0.0, age_s),
        )
    )
    return samples
