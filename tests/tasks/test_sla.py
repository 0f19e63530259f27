"""The `sla` task (iTop's CheckStopWatchThresholds) on SQLite and MariaDB."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from structlog.testing import capture_logs

import cronloop.standard.sla as sla_module
from cronloop import StopRun, TaskContext
from cronloop.definitions.registry import TaskDefinition
from cronloop.standard.outbox import outbox, queue_email
from cronloop.standard.sla import process_due, sla
from cronloop.standard.sla_notify import Due, SlaConfig, SlaConfigError
from cronloop.standard.tickets import compute_deadlines, create_ticket, tickets
from cronloop.testing import make_context, options_of, stop_after_checkpoints

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR, DAY = 3600.0, 86400.0
TTO_75 = T0 + timedelta(minutes=45)  # with a TTO goal of one hour
TTO_100 = T0 + timedelta(hours=1)
TTR_75 = T0 + timedelta(hours=18)  # with a TTR goal of one day
TTR_100 = T0 + timedelta(days=1)
SEC = timedelta(seconds=1)


def context(engine: AsyncEngine, **options: Any) -> TaskContext:
    return make_context(engine, name="sla", options=options_of(sla, **options))


async def add(
    engine: AsyncEngine,
    n: int = 1,
    *,
    status: str = "new",
    agent: str | None = "agent@example.org",
    **kw: Any,
) -> int:
    """A ticket created at T0 with a one-hour TTO and a one-day TTR."""
    ctx = context(engine)
    return await create_ticket(
        ctx.db,
        ref=f"R-{n:06d}",
        title=f"Printer {n} on fire",
        priority=2,
        team_email="team@example.org",
        agent_email=agent,
        status=status,
        tto_goal_s=kw.get("tto", HOUR),
        ttr_goal_s=kw.get("ttr", DAY),
        now=T0,
    )


async def ticket(engine: AsyncEngine, ticket_id: int) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (await conn.execute(select(tickets).where(tickets.c.id == ticket_id))).mappings()
        return dict(row.one())


async def set_ticket(engine: AsyncEngine, ticket_id: int, **values: Any) -> None:
    async with engine.begin() as conn:
        await conn.execute(update(tickets).where(tickets.c.id == ticket_id).values(**values))


async def emails(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(outbox).order_by(outbox.c.id))).mappings().all()
    return [{**r, "to": json.loads(r["recipients"])["to"]} for r in rows]


async def run(engine: AsyncEngine, now: datetime, **options: Any) -> sla_module.SlaReport:
    return await process_due(context(engine, **options), now)


# -- deadlines and tickets -------------------------------------------------------------


def test_compute_deadlines_is_calendar_time() -> None:
    assert compute_deadlines(T0, HOUR) == {75: TTO_75, 100: TTO_100}
    assert compute_deadlines(T0, 10) == {75: T0 + timedelta(seconds=7.5), 100: T0 + 10 * SEC}
    with pytest.raises(ValueError, match="naive"):
        compute_deadlines(T0.replace(tzinfo=None), HOUR)
    for bad in (0, -1, math.inf, math.nan):
        with pytest.raises(ValueError, match="goal_s"):
            compute_deadlines(T0, bad)


async def test_create_ticket_runs_the_stopwatches_of_its_status(engine: AsyncEngine) -> None:
    new = await ticket(engine, await add(engine, 1))
    assert (new["tto_state"], new["ttr_state"]) == ("running", "running")
    assert (new["tto_75_deadline"], new["tto_100_deadline"]) == (TTO_75, TTO_100)
    assert (new["ttr_75_deadline"], new["ttr_100_deadline"]) == (TTR_75, TTR_100)
    assert not new["tto_75_triggered"] and new["tto_75_overrun"] is None
    assigned = await ticket(engine, await add(engine, 2, status="assigned"))
    assert (assigned["tto_state"], assigned["ttr_state"]) == ("stopped", "running")
    assert assigned["tto_100_deadline"] is None
    pending = await ticket(engine, await add(engine, 3, status="pending"))
    assert pending["ttr_state"] == "paused"
    resolved = await ticket(engine, await add(engine, 4, status="resolved"))
    assert (resolved["tto_state"], resolved["ttr_state"]) == ("stopped", "stopped")
    with pytest.raises(ValueError, match="status"):
        await add(engine, 5, status="open")


# -- thresholds, escalation, notification ---------------------------------------------


@pytest.mark.parametrize("status", ["new", "approved"])
async def test_tto_75_then_100_escalates_to_escalated_tto(engine: AsyncEngine, status: str) -> None:
    tid = await add(engine, status=status)
    assert (await run(engine, TTO_75 - SEC)).triggered == 0
    report = await run(engine, TTO_75 + 90 * SEC)
    assert report.message() == "1 threshold triggered, 0 tickets escalated, 0 skipped"
    row = await ticket(engine, tid)
    assert row["tto_75_triggered"] and row["tto_75_overrun"] == 90.0
    assert row["status"] == status and not row["tto_100_triggered"]
    [mail] = await emails(engine)
    assert mail["to"] == ["team@example.org", "agent@example.org"]
    assert mail["subject"] == "[R-000001] TTO 75% reached: Printer 1 on fire"
    assert "Noticed:  1 min 30 s after the deadline" in mail["body_text"]

    report = await run(engine, TTO_100 + 5 * SEC)
    assert report.message() == "1 threshold triggered, 1 ticket escalated, 0 skipped"
    row = await ticket(engine, tid)
    assert row["status"] == "escalated_tto"
    assert row["tto_100_triggered"] and row["tto_100_overrun"] == 5.0
    assert not row["ttr_75_triggered"] and not row["ttr_100_triggered"]
    _, second = await emails(engine)
    assert second["subject"] == "[R-000001] TTO 100% reached: Printer 1 on fire"
    assert "Status:   escalated_tto" in second["body_text"]
    assert json.loads(second["headers"]) == {
        "X-Cronloop-Ticket": "R-000001",
        "X-Cronloop-SLA": "tto-100",
    }
    assert (await run(engine, TTO_100 + HOUR * SEC)).triggered == 0  # never twice
    assert len(await emails(engine)) == 2


async def test_ttr_75_then_100_escalates_assigned_to_escalated_ttr(engine: AsyncEngine) -> None:
    tid = await add(engine, status="assigned")
    await run(engine, TTR_75)
    row = await ticket(engine, tid)
    assert row["ttr_75_triggered"] and row["ttr_75_overrun"] == 0.0 and row["status"] == "assigned"
    await run(engine, TTR_100 + SEC)
    row = await ticket(engine, tid)
    assert row["status"] == "escalated_ttr" and row["ttr_100_triggered"]
    assert not row["tto_75_triggered"]  # the stopped TTO never fires
    assert [m["subject"][11:24] for m in await emails(engine)] == ["TTR 75% reach", "TTR 100% reac"]


async def test_both_thresholds_passed_while_down_fire_in_order_in_one_run(
    engine: AsyncEngine,
) -> None:
    tid = await add(engine)
    report = await run(engine, TTO_100 + 60 * SEC)
    assert (report.triggered, report.escalated, report.emails) == (2, 1, 2)
    row = await ticket(engine, tid)
    assert (row["tto_75_overrun"], row["tto_100_overrun"]) == (960.0, 60.0)
    assert [m["subject"][11:19] for m in await emails(engine)] == ["TTO 75% ", "TTO 100%"]


async def test_thresholds_not_yet_due_stay_untouched(engine: AsyncEngine) -> None:
    ids = [await add(engine, n) for n in range(1, 4)]
    before = [await ticket(engine, i) for i in ids]
    report = await run(engine, TTO_75 - timedelta(microseconds=1))
    assert report.message() == "0 thresholds triggered, 0 tickets escalated, 0 skipped"
    assert [await ticket(engine, i) for i in ids] == before
    assert await emails(engine) == []


async def test_resolved_paused_and_stopped_stopwatches_are_never_processed(
    engine: AsyncEngine,
) -> None:
    late = TTR_100 + HOUR * SEC
    resolved = await add(engine, 1)
    await set_ticket(engine, resolved, status="resolved", tto_state="stopped", ttr_state="stopped")
    paused = await add(engine, 2, status="pending")
    before = [await ticket(engine, resolved), await ticket(engine, paused)]
    assert (await run(engine, late)).triggered == 0
    assert [await ticket(engine, resolved), await ticket(engine, paused)] == before
    assert await emails(engine) == []


async def test_a_stopwatch_stopped_with_past_deadlines_never_fires(engine: AsyncEngine) -> None:
    """Assigning a ticket stops TTO but keeps its deadlines; the TTR firing on the same
    ticket must not drag the stopped TTO along."""
    tid = await add(engine)
    await set_ticket(engine, tid, status="assigned", tto_state="stopped")
    report = await run(engine, TTR_75)
    assert (report.triggered, report.escalated) == (1, 0)
    row = await ticket(engine, tid)
    assert row["ttr_75_triggered"] and not row["tto_75_triggered"]
    assert not row["tto_100_triggered"] and row["status"] == "assigned"


async def test_statuses_without_timeout_transition_are_notified_not_escalated(
    engine: AsyncEngine,
) -> None:
    pending = await add(engine, 1)
    await set_ticket(engine, pending, status="pending", tto_state="stopped")
    escalated = await add(engine, 2)
    await set_ticket(engine, escalated, status="escalated_tto", tto_state="stopped")
    report = await run(engine, TTR_100)
    assert (report.triggered, report.escalated, report.emails) == (4, 0, 4)
    assert (await ticket(engine, pending))["status"] == "pending"
    assert (await ticket(engine, escalated))["status"] == "escalated_tto"


# -- options -------------------------------------------------------------------------------


async def test_notify_options_choose_which_thresholds_and_whom(engine: AsyncEngine) -> None:
    no_agent = await add(engine, 1, agent=None)
    await add(engine, 2)
    await run(engine, TTO_75, notify_to="agent", notify_75=False)
    assert await emails(engine) == []  # marked, but nobody told about 75 %
    assert (await ticket(engine, no_agent))["tto_75_triggered"]
    await run(engine, TTO_100, notify_to="agent", sender="SLA <sla@example.org>")
    mails = {m["subject"][1:9]: m for m in await emails(engine)}
    assert mails["R-000001"]["to"] == ["team@example.org"]  # no agent: the team
    assert mails["R-000002"]["to"] == ["agent@example.org"]
    assert mails["R-000002"]["sender"] == "SLA <sla@example.org>"
    await add(engine, 3)
    await run(engine, TTR_100, notify_to="team", notify_100=False)
    later = (await emails(engine))[2:]
    assert sorted(m["subject"][1:18] for m in later) == [
        "R-000001] TTR 75%",
        "R-000002] TTR 75%",
        "R-000003] TTO 75%",
        "R-000003] TTR 75%",
    ]
    assert {tuple(m["to"]) for m in later} == {("team@example.org",)}


async def test_templates_escape_html_and_keep_the_subject_on_one_line(engine: AsyncEngine) -> None:
    tid = await add(engine)
    await set_ticket(engine, tid, title="<b>broken</b>\r\nBcc: victim@example.org")
    await run(
        engine,
        TTO_75,
        subject_template="{ref} {stopwatch_name}: {title}",
        body_template="{threshold} of {stopwatch}\\nline two",
        html_template="<p>{title}</p>",
    )
    [mail] = await emails(engine)
    assert mail["subject"] == "R-000001 time to own: <b>broken</b> Bcc: victim@example.org"
    assert mail["body_text"] == "75% of TTO\nline two"
    assert mail["body_html"] == "<p>&lt;b&gt;broken&lt;/b&gt;\r\nBcc: victim@example.org</p>"


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("notify_to", "boss", "notify_to"),
        ("subject_template", "{ref} {nope}", "unknown placeholder {nope}"),
        ("body_template", "{title.__class__}", "unknown placeholder"),
        ("html_template", "{ref", "html_template"),
        ("batch_size", 0, "batch_size"),
        ("sender", "not an address", "sender"),
    ],
)
async def test_bad_options_fail_the_run_before_touching_anything(
    engine: AsyncEngine, option: str, value: Any, error: str
) -> None:
    await add(engine)
    with pytest.raises(SlaConfigError, match=error):
        await run(engine, TTR_100, **{option: value})
    assert await emails(engine) == []


def test_the_task_is_declared_as_sla_every_10_s() -> None:
    definition: TaskDefinition = sla.__cronloop_task__  # type: ignore[attr-defined]
    assert (definition.name, definition.every) == ("sla", 10)
    assert definition.options["batch_size"] == 200 and definition.options["notify_to"] == "both"


# -- exactly once: concurrency, interruption, crashes ------------------------------------


async def test_two_concurrent_runs_trigger_each_threshold_once(engine: AsyncEngine) -> None:
    ids = [await add(engine, n) for n in range(1, 9)]
    first, second = await asyncio.gather(
        process_due(context(engine, batch_size=3), TTO_100),
        process_due(context(engine, batch_size=3), TTO_100),
    )
    assert first.triggered + second.triggered == 16
    assert first.escalated + second.escalated == 8
    mails = await emails(engine)
    assert len(mails) == 16
    assert len({m["subject"][:20] for m in mails}) == 16  # one per ticket and threshold
    assert {(await ticket(engine, i))["status"] for i in ids} == {"escalated_tto"}


async def test_interrupted_run_leaves_whole_tickets_and_the_next_run_finishes(
    engine: AsyncEngine,
) -> None:
    ids = [await add(engine, n) for n in range(1, 6)]
    ctx = context(engine, batch_size=2)
    stop_after_checkpoints(ctx, 7)
    with pytest.raises(StopRun):
        await process_due(ctx, TTO_100)
    rows = [await ticket(engine, i) for i in ids]
    done = [r["ref"] for r in rows if r["status"] == "escalated_tto"]
    assert 0 < len(done) < 5
    assert done == [f"R-{n:06d}" for n in range(1, len(done) + 1)]  # oldest first
    for r in rows:  # each ticket is complete or untouched, never half done
        flags = (r["tto_75_triggered"], r["tto_100_triggered"])
        assert flags == ((True, True) if r["ref"] in done else (False, False))
    assert sorted({m["subject"][1:9] for m in await emails(engine)}) == done
    assert len(await emails(engine)) == 2 * len(done)

    report = await run(engine, TTO_100)
    assert report.triggered == 2 * (5 - len(done))
    assert len(await emails(engine)) == 10
    assert {(await ticket(engine, i))["status"] for i in ids} == {"escalated_tto"}


async def test_crash_inside_a_ticket_rolls_it_back_and_the_next_run_does_it_once(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [await add(engine, n) for n in range(1, 4)]
    seen_flag: list[bool] = []

    async def crash_once(session: AsyncSession, **kw: Any) -> str:
        if not seen_flag:
            flag = select(tickets.c.tto_75_triggered).where(tickets.c.id == ids[0])
            seen_flag.append(bool((await session.execute(flag)).scalar_one()))
            raise RuntimeError("outbox exploded")
        return await queue_email(session, **kw)

    monkeypatch.setattr(sla_module, "queue_email", crash_once)
    monkeypatch.setattr(sla_module, "_now", lambda: TTO_75)
    with pytest.raises(RuntimeError, match=rf"2 thresholds triggered.*1 failed \(ids {ids[0]}\)"):
        await sla(context(engine))
    assert seen_flag == [True]  # the UPDATE had happened inside the transaction...
    crashed = await ticket(engine, ids[0])  # ...and was rolled back
    assert not crashed["tto_75_triggered"] and crashed["tto_75_overrun"] is None
    assert sorted(m["subject"][1:9] for m in await emails(engine)) == ["R-000002", "R-000003"]

    assert await sla(context(engine)) == "1 threshold triggered, 0 tickets escalated, 0 skipped"
    assert (await ticket(engine, ids[0]))["tto_75_triggered"]
    assert sorted(m["subject"][1:9] for m in await emails(engine)) == [
        "R-000001",
        "R-000002",
        "R-000003",
    ]


async def test_repeated_failures_stop_the_run(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = [await add(engine, n) for n in range(1, 6)]
    calls: list[int] = []

    async def broken_outbox(session: AsyncSession, **kw: Any) -> str:
        calls.append(1)
        raise RuntimeError("no such table: cronloop_outbox")

    monkeypatch.setattr(sla_module, "queue_email", broken_outbox)
    with pytest.raises(RuntimeError, match="no such table"):
        await run(engine, TTO_75)
    assert len(calls) == sla_module.MAX_CONSECUTIVE_FAILURES
    assert not any([(await ticket(engine, i))["tto_75_triggered"] for i in ids])


async def test_a_threshold_already_flipped_is_not_notified_again(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The conditional UPDATE is the last word: even a stale view of the row (as another
    worker might have) cannot notify twice."""
    tid = await add(engine)
    await run(engine, TTO_75)
    stale = [Due("tto", 75, TTO_75)]
    monkeypatch.setattr(sla_module, "due_thresholds", lambda row, now: stale)
    config = SlaConfig.from_options({})
    async with context(engine).db() as session, session.begin():
        result = await sla_module.process_ticket(session, config, tid, TTO_75)
    assert result is not None and result.triggered == []
    assert len(await emails(engine)) == 1


# -- bad data ------------------------------------------------------------------------------

BROKEN: list[tuple[dict[str, Any], str]] = [
    ({"status": "open"}, "unknown status 'open'"),
    ({"team_email": "not-an-email"}, "invalid team_email"),
    ({"agent_email": "x@"}, "invalid agent_email"),
    ({"tto_100_deadline": T0 + timedelta(minutes=10)}, "TTO 100 % deadline"),
    ({"tto_75_deadline": None}, "TTO has no 75 % deadline"),
    ({"status": "closed", "tto_state": "stopped"}, "TTR stopwatch still running on a closed"),
    ({"ttr_state": "bogus"}, "unknown TTR state 'bogus'"),
    # caught only when the outbox refuses the message: rolled back, then marked
    ({"ref": "R-9\r\nBcc: x@example.org"}, "notification refused: headers"),
]


async def test_broken_tickets_are_logged_once_and_skipped_and_the_rest_processed(
    engine: AsyncEngine,
) -> None:
    good = await add(engine, 1)
    broken = {}
    for n, (values, reason) in enumerate(BROKEN, start=2):
        tid = await add(engine, n)
        await set_ticket(engine, tid, **values)
        broken[tid] = reason
    before = {tid: await ticket(engine, tid) for tid in broken}
    with capture_logs() as logs:
        report = await run(engine, TTR_100)
    assert (report.triggered, report.escalated, report.skipped) == (4, 1, len(BROKEN))
    warnings = {e["ticket_id"]: e["reason"] for e in logs if e["log_level"] == "warning"}
    assert set(warnings) == set(broken)
    for tid, reason in broken.items():
        assert reason in warnings[tid]
        row = await ticket(engine, tid)
        assert row["sla_error"] == warnings[tid]
        assert {**row, "sla_error": None} == before[tid]  # nothing else written
    assert {m["subject"][1:9] for m in await emails(engine)} == {"R-000001"}
    assert (await ticket(engine, good))["status"] == "escalated_tto"

    with capture_logs() as logs:
        report = await run(engine, TTR_100 + SEC)
    assert report.skipped == 0 and not [e for e in logs if e["log_level"] == "warning"]

    fixed = next(iter(broken))  # the application fixes the data and clears sla_error
    await set_ticket(engine, fixed, status="new", sla_error=None)
    report = await run(engine, TTR_100 + 2 * SEC)
    assert (report.triggered, report.escalated) == (4, 1)


async def test_a_ticket_marked_bad_by_another_worker_is_not_logged_again(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    tid = await add(engine)
    await set_ticket(engine, tid, status="open")
    await run(engine, TTO_75)
    marked = (await ticket(engine, tid))["sla_error"]

    async def stale_batch(*args: Any, **kw: Any) -> list[int]:
        return [tid]  # as read by a worker just before the other one marked the ticket

    monkeypatch.setattr(sla_module, "due_ticket_ids", stale_batch)
    with capture_logs() as logs:
        report = await run(engine, TTO_75)
    assert report.skipped == 0 and [e["event"] for e in logs] == []
    assert (await ticket(engine, tid))["sla_error"] == marked


async def test_the_run_message_counts_thresholds_escalations_and_skips(engine: AsyncEngine) -> None:
    await add(engine, 1)
    bad = await add(engine, 2)
    await set_ticket(engine, bad, status="???")
    report = await run(engine, TTR_75)
    assert report.message() == "3 thresholds triggered, 1 ticket escalated, 1 skipped"
