"""Quarantine: the one place a task is taken out of rotation for misbehaving.

Two roads lead here: a task's `quarantine_timeouts`-th timeout in a row (written with the
run's end, see `record`), and strikes for blocking the event loop (`strike`, called by
the watchdog over its own short-lived engine). Either way only an active task is
quarantined, so an operator's pause or a configuration's verdict is never overwritten;
`resume` (see `admin`) undoes it and resets both counters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, select, update

from cronloop.domain.outcome import TaskStatus
from cronloop.store.interface import strike_quarantine_reason
from cronloop.store.sql.connector import Connector
from cronloop.store.sql.tables import tasks

T = tasks.c


def quarantine_assignments(reason: str) -> list[tuple[Any, Any]]:
    """Ordered SET assignments that quarantine the row if it is still active, saying
    `reason`. The reason comes first: MySQL evaluates an UPDATE's assignments left to
    right, with the new values."""
    active = T.status == TaskStatus.ACTIVE
    return [
        (T.status_reason, case((active, reason), else_=T.status_reason)),
        (T.status, case((active, TaskStatus.QUARANTINED.value), else_=T.status)),
    ]


class Quarantine:
    def __init__(self, db: Connector) -> None:
        self.db = db

    async def strike(self, names: Sequence[str], reason: str, quarantine_strikes: int) -> list[str]:
        """See `Store.strike`. One short transaction."""
        if not names:
            return []
        quarantined: list[str] = []
        async with self.db.begin() as conn:
            await conn.execute(
                update(tasks)
                .where(T.name.in_(list(names)))
                .values(strikes=T.strikes + 1, updated=self.db.now())
            )
            due = await conn.execute(
                select(T.name, T.strikes).where(
                    T.name.in_(list(names)),
                    T.status == TaskStatus.ACTIVE,
                    T.strikes >= quarantine_strikes,
                )
            )
            for name, strikes in due.all():
                await conn.execute(
                    update(tasks)
                    .where(T.name == name)
                    .ordered_values(
                        *quarantine_assignments(strike_quarantine_reason(reason, strikes, name)),
                        (T.updated, self.db.now()),
                    )
                )
                quarantined.append(name)
        return quarantined
