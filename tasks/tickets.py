"""The ticket table the `sla` task watches, and the helpers the application uses to fill it.

This is the application-facing contract (iTop's UserRequest, reduced to what the SLA logic
reads): each ticket carries two stopwatches, TTO (time to own) and TTR (time to resolve).
A stopwatch has a state, a goal, and two thresholds (75 % and 100 %), each with a
`deadline`, a `triggered` flag and an `overrun` (seconds past the deadline when the task
noticed it). Column names are `<stopwatch>_<percent>_<field>`, e.g. `tto_75_deadline`.

Who writes what:

- The application writes the ticket, the stopwatch `state`/`started`/`goal_s`, and the
  deadlines, when it saves the ticket. iTop computes deadlines in *working* time (the
  ticket's coverage window and holidays); `compute_deadlines` here uses calendar time, so an
  application with business hours computes the deadlines itself and only stores them.
  Pausing a stopwatch (e.g. `pending`) and resuming it means the application recomputes the
  deadlines; resolving a ticket means it sets the stopwatches to `stopped`.
- The `sla` task writes only `*_triggered`, `*_overrun`, `status` (escalation) and
  `sla_error`. When the application changes a deadline it resets that threshold's
  `triggered` to 0 if it wants the threshold to fire again (iTop does the same).
- `sla_error` is set by the task when a ticket's data is inconsistent (unknown status,
  invalid email, 100 % deadline before the 75 % one...): the ticket is then skipped, and
  logged once, until the application fixes the data and sets `sla_error` back to NULL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    SmallInteger,
    String,
    Table,
    insert,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cronloop.sql import UTCDateTime
from cronloop.standard.outbox import check_address
from cronloop.standard.schema import metadata

STATUSES = (
    "new",
    "approved",
    "assigned",
    "pending",
    "escalated_tto",
    "escalated_ttr",
    "resolved",
    "closed",
)
TERMINAL_STATUSES = frozenset({"resolved", "closed"})
STOPWATCHES = ("tto", "ttr")
THRESHOLDS = (75, 100)
# `stopped`: not started or finished; `paused`: e.g. TTR while the ticket is pending (the
# application recomputes the deadlines on resume). Only `running` thresholds ever trigger.
STOPWATCH_STATES = ("stopped", "running", "paused")

# iTop's UserRequest: the states in which each stopwatch runs (used by `create_ticket`).
RUNS_IN = {
    "tto": frozenset({"new", "approved", "escalated_tto"}),
    "ttr": frozenset({"new", "approved", "escalated_tto", "assigned", "escalated_ttr"}),
}
PAUSED_IN = {"tto": frozenset[str](), "ttr": frozenset({"pending"})}


def _stopwatch_columns(sw: str) -> list[Column[Any]]:
    columns: list[Column[Any]] = [
        Column(f"{sw}_state", String(16), nullable=False, server_default="stopped"),
        Column(f"{sw}_started", UTCDateTime()),  # informational: when it last started
        Column(f"{sw}_goal_s", Float),  # NULL: no SLA, hence no deadlines
    ]
    for pct in THRESHOLDS:
        columns += [
            Column(f"{sw}_{pct}_deadline", UTCDateTime()),  # NULL: never triggers
            Column(f"{sw}_{pct}_triggered", Boolean, nullable=False, server_default="0"),
            Column(f"{sw}_{pct}_overrun", Float),  # seconds late when the task saw it
        ]
    return columns


def _due_index(sw: str, pct: int) -> Index:
    """The index the task's "which thresholds are due" query walks: equality on the state,
    the flag and `sla_error IS NULL`, then a range on the deadline, in deadline order, so
    the query reads only due rows however many tickets there are."""
    return Index(
        f"ix_cronloop_ticket_{sw}_{pct}_due",
        f"{sw}_state",
        f"{sw}_{pct}_triggered",
        "sla_error",
        f"{sw}_{pct}_deadline",
    )


tickets = Table(
    "cronloop_ticket",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ref", String(64), nullable=False, unique=True),  # e.g. "R-000123"
    Column("title", String(255), nullable=False),
    Column("status", String(16), nullable=False, server_default="new"),
    Column("priority", SmallInteger, nullable=False, server_default="4"),  # 1 (high) to 4
    Column("team_email", String(254), nullable=False),
    Column("agent_email", String(254)),
    Column("created", UTCDateTime(), nullable=False),
    *_stopwatch_columns("tto"),
    *_stopwatch_columns("ttr"),
    # why the task skips this ticket (bad data); the application clears it after a fix
    Column("sla_error", String(255)),
    *[_due_index(sw, pct) for sw in STOPWATCHES for pct in THRESHOLDS],
)


def compute_deadlines(started: datetime, goal_s: float) -> dict[int, datetime]:
    """The 75 % and 100 % deadlines of a stopwatch started at `started` with `goal_s`.

    Calendar time: iTop counts only working hours (the ticket's coverage window); an
    application that needs that computes the deadlines itself and stores them, the task
    only compares them with the clock. Returns `{75: datetime, 100: datetime}`.
    """
    if started.tzinfo is None:
        raise ValueError(f"naive datetime {started!r}: deadlines are UTC instants")
    if not (isinstance(goal_s, int | float) and math.isfinite(goal_s) and goal_s > 0):
        raise ValueError(f"goal_s={goal_s!r} must be a positive number of seconds")
    return {pct: started + timedelta(seconds=goal_s * pct / 100) for pct in THRESHOLDS}


def _stopwatch_values(sw: str, status: str, goal_s: float | None, now: datetime) -> dict[str, Any]:
    if status in RUNS_IN[sw]:
        state = "running"
    elif status in PAUSED_IN[sw]:
        state = "paused"
    else:
        return {f"{sw}_state": "stopped", f"{sw}_goal_s": goal_s}
    values: dict[str, Any] = {f"{sw}_state": state, f"{sw}_started": now, f"{sw}_goal_s": goal_s}
    if goal_s is not None:
        for pct, deadline in compute_deadlines(now, goal_s).items():
            values[f"{sw}_{pct}_deadline"] = deadline
    return values


async def create_ticket(
    session: AsyncSession | async_sessionmaker[AsyncSession],
    *,
    ref: str,
    title: str,
    priority: int,
    team_email: str,
    agent_email: str | None = None,
    status: str = "new",
    tto_goal_s: float | None,
    ttr_goal_s: float | None,
    now: datetime,
) -> int:
    """Insert a ticket as the application would save it: each stopwatch running (or
    paused, or stopped) according to the status, as in iTop's UserRequest, and its
    deadlines computed in calendar time from `now`. Returns the new id.

    With a session, the insert joins the caller's transaction (the caller commits); with
    a sessionmaker, it commits on its own. For tests and demo data.
    """
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    if not 1 <= priority <= 4:
        raise ValueError(f"priority {priority!r} must be 1 to 4")
    values: dict[str, Any] = {
        "ref": ref,
        "title": title,
        "status": status,
        "priority": priority,
        "team_email": team_email,
        "agent_email": agent_email,
        "created": now,
        **_stopwatch_values("tto", status, tto_goal_s, now),
        **_stopwatch_values("ttr", status, ttr_goal_s, now),
    }
    if isinstance(session, AsyncSession):
        return await _insert(session, values)
    async with session() as own, own.begin():
        return await _insert(own, values)


async def _insert(session: AsyncSession, values: Mapping[str, Any]) -> int:
    result = cast("CursorResult[Any]", await session.execute(insert(tickets).values(**values)))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def ticket_problem(row: Mapping[Any, Any]) -> str | None:
    """Why the `sla` task cannot process this ticket row, or None if it can.

    Checked before anything is written, so a bad ticket is skipped whole (never half
    notified, never escalated from an unknown state). Emails are checked with the outbox's
    own rules, so the notification cannot be refused later in the transaction.
    """
    status = row["status"]
    if status not in STATUSES:
        return f"unknown status {_short(status)}"
    for field in ("team_email", "agent_email"):
        value = row[field]
        if value is None and field == "agent_email":
            continue
        try:
            check_address(value, field)
        except ValueError:
            return f"invalid {field} {_short(value)}"
    for sw in STOPWATCHES:
        problem = _stopwatch_problem(row, sw, status)
        if problem is not None:
            return problem
    return None


def _stopwatch_problem(row: Mapping[Any, Any], sw: str, status: str) -> str | None:
    name = sw.upper()
    state = row[f"{sw}_state"]
    if state not in STOPWATCH_STATES:
        return f"unknown {name} state {_short(state)}"
    if state != "running":
        return None
    if status in TERMINAL_STATUSES:
        return f"{name} stopwatch still running on a {status} ticket (the application must stop it)"
    d75, d100 = row[f"{sw}_75_deadline"], row[f"{sw}_100_deadline"]
    if (d75 is None) != (d100 is None):
        missing = 75 if d75 is None else 100
        return f"{name} has no {missing} % deadline but has the other one"
    if d75 is not None and d100 is not None and d100 < d75:
        return (
            f"{name} 100 % deadline {d100:%Y-%m-%d %H:%M:%S}"
            f" is before the 75 % one {d75:%Y-%m-%d %H:%M:%S}"
        )
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
