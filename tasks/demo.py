"""Demo data for `cronloop demo`: a newcomer sees every standard task do its work.

Tickets whose SLA thresholds pass within a minute, a few queued emails, expired drafts
and old export results; then `cronloop run` shows escalations, emails written by the
file transport, drafts deleted, and `cronloop status` every task's figures. Everything
goes through the same tables and helpers an application would use.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cronloop.standard.attachments import draft_attachments, export_results
from cronloop.standard.outbox import queue_email
from cronloop.standard.tickets import create_ticket

TEAM = "servicedesk@demo.example"
AGENT = "alice@demo.example"
# (title, status, TTO goal s, TTR goal s): 75 % thresholds pass in 15-45 s, 100 % in 20-60 s
TICKETS = [
    ("Printer on floor 3 is jammed", "new", 20, 600),
    ("VPN drops every 10 minutes", "approved", 40, 900),
    ("Mailbox full for the sales team", "assigned", 600, 60),
    ("New laptop for Bob", "assigned", 600, 45),
    ("Password reset", "resolved", 30, 30),
]


@dataclass(frozen=True)
class DemoSummary:
    tickets: int
    emails: int
    drafts: int
    exports: int


async def fill_demo(db: async_sessionmaker[AsyncSession], now: datetime) -> DemoSummary:
    """Insert the demo data (idempotent enough: every run adds a fresh batch)."""
    batch = uuid.uuid4().hex[:4].upper()
    async with db() as session, session.begin():
        for n, (title, status, tto_s, ttr_s) in enumerate(TICKETS, 1):
            await create_ticket(
                session,
                ref=f"R-{batch}-{n:03d}",
                title=title,
                priority=1 + n % 4,
                team_email=TEAM,
                agent_email=AGENT if status == "assigned" else None,
                status=status,
                tto_goal_s=tto_s,
                ttr_goal_s=ttr_s,
                now=now,
            )
        for n in range(3):
            await queue_email(
                session,
                to=[AGENT],
                subject=f"Welcome to cronloop ({batch}, {n + 1}/3)",
                body_text="This message was queued by `cronloop demo` and sent by the email task.",
                body_html="<p>This message was queued by <code>cronloop demo</code>.</p>",
            )
        drafts = [_draft(now, expired=n < 4) for n in range(6)]
        await session.execute(insert(draft_attachments), drafts)
        exports = [
            {
                "token": f"demo-{batch}-{n}",
                "created": now - timedelta(days=2 - n),
                "size": 0,
                "status": "done",
            }
            for n in range(3)
        ]
        await session.execute(insert(export_results), exports)
    return DemoSummary(tickets=len(TICKETS), emails=3, drafts=len(drafts), exports=len(exports))


def _draft(now: datetime, *, expired: bool) -> dict[str, object]:
    """An unlinked upload from a cancelled edit; expired ones are the GC's work."""
    return {
        "kind": "inline_image",
        "temp_id": uuid.uuid4().hex,
        "file_name": "screenshot.png",
        "mime_type": "image/png",
        "size": 0,
        "created": now - timedelta(days=2),
        "expire": now - timedelta(hours=1) if expired else now + timedelta(hours=20),
    }
