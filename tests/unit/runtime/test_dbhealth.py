"""The one database-error policy: what each kind of failure does, and how the drivers'
exceptions are classified (real exceptions from real servers where one can be had)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any

import pymysql.err
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from structlog.testing import capture_logs

from cronloop.domain.clock import FakeClock
from cronloop.runtime.dbhealth import REMINDER_EVERY_S, DatabaseFailure, DbHealth
from cronloop.store.sql.errors import ErrorKind, classify


def wrapped(orig: BaseException) -> sa_exc.DBAPIError:
    """As SQLAlchemy raises a driver's exception."""
    return sa_exc.DBAPIError.instance("UPDATE x", (), orig, pymysql.err.Error)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (pymysql.err.OperationalError(1213, "Deadlock found; try restarting"), ErrorKind.CONFLICT),
        (pymysql.err.OperationalError(1205, "Lock wait timeout exceeded"), ErrorKind.CONFLICT),
        (pymysql.err.OperationalError(2006, "MySQL server has gone away"), ErrorKind.OUTAGE),
        (pymysql.err.OperationalError(2013, "Lost connection during query"), ErrorKind.OUTAGE),
        (pymysql.err.OperationalError(2003, "Can't connect to MySQL server"), ErrorKind.OUTAGE),
        (pymysql.err.OperationalError(1047, "WSREP has not yet prepared node"), ErrorKind.OUTAGE),
        (pymysql.err.OperationalError(1053, "Server shutdown in progress"), ErrorKind.OUTAGE),
        (
            pymysql.err.OperationalError(
                1180,
                "Error while appending streaming replication fragment"
                "(provider status: Not connected to Primary Component)",
            ),
            ErrorKind.OUTAGE,
        ),
        (pymysql.err.InterfaceError(0, ""), ErrorKind.OUTAGE),
        (pymysql.err.DataError(1406, "Data too long for column 'last_message'"), ErrorKind.REFUSED),
        (pymysql.err.DataError(1366, "Incorrect string value"), ErrorKind.REFUSED),
        (pymysql.err.IntegrityError(1452, "foreign key constraint fails"), ErrorKind.REFUSED),
        (pymysql.err.IntegrityError(1048, "Column cannot be null"), ErrorKind.REFUSED),
        (pymysql.err.ProgrammingError(1064, "You have an error in your SQL syntax"), ErrorKind.BUG),
        (pymysql.err.ProgrammingError(1146, "Table doesn't exist"), ErrorKind.BUG),
        (pymysql.err.OperationalError(1054, "Unknown column"), ErrorKind.BUG),
        (sqlite3.OperationalError("database is locked"), ErrorKind.CONFLICT),
        (sqlite3.OperationalError("disk I/O error"), ErrorKind.OUTAGE),
        (sqlite3.OperationalError("no such table: cronloop_task"), ErrorKind.BUG),
        (sqlite3.IntegrityError("NOT NULL constraint failed"), ErrorKind.REFUSED),
        (UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed"), ErrorKind.REFUSED),
        (TimeoutError(), ErrorKind.OUTAGE),
        (ConnectionRefusedError(111, "Connection refused"), ErrorKind.OUTAGE),
        (TypeError("unsupported operand"), ErrorKind.BUG),
        (KeyError("run_id"), ErrorKind.BUG),
    ],
)
def test_classify_bare_and_as_sqlalchemy_raises_them(exc: BaseException, kind: ErrorKind) -> None:
    assert classify(exc) is kind
    if isinstance(exc, pymysql.err.Error | sqlite3.Error):
        assert classify(wrapped(exc)) is kind


@pytest.mark.parametrize("db_url", ["mariadb"], indirect=True)
async def test_classify_what_a_real_mariadb_raises(engine: AsyncEngine) -> None:
    async def error_of(sql: str) -> BaseException:
        try:
            async with engine.begin() as conn:
                await conn.execute(text("SET SESSION sql_mode = 'STRICT_ALL_TABLES'"))
                await conn.execute(text(sql))
        except Exception as exc:
            return exc
        raise AssertionError(f"no error from {sql}")

    long_name = "x" * 300
    too_long = await error_of(
        "INSERT INTO cronloop_task (name, schedule, timeout_s, created, updated) "
        f"VALUES ('{long_name}', '', 1, UTC_TIMESTAMP(), UTC_TIMESTAMP())"
    )
    assert classify(too_long) is ErrorKind.REFUSED, too_long
    assert classify(await error_of("SELEC 1")) is ErrorKind.BUG
    assert classify(await error_of("SELECT * FROM no_such_table")) is ErrorKind.BUG
    gone = create_async_engine("mysql+aiomysql://root@127.0.0.1:1/test")
    try:
        async with gone.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        assert classify(exc) is ErrorKind.OUTAGE, exc
    else:
        raise AssertionError("connected to port 1")
    finally:
        await gone.dispose()


# -- the policy ------------------------------------------------------------------------


def failing(*errors: BaseException) -> Any:
    """An operation that raises `errors` in turn, then succeeds; counts its calls."""
    queue = list(errors)

    async def op() -> str:
        op.calls += 1  # type: ignore[attr-defined]
        if queue:
            raise queue.pop(0)
        return "done"

    op.calls = 0  # type: ignore[attr-defined]
    return op


async def drive(clock: FakeClock, aw: Any, step_s: float = 0.001) -> Any:
    task = asyncio.ensure_future(aw)
    for _ in range(2000):
        if task.done():
            break
        await asyncio.sleep(0)
        clock.advance(step_s)
    return await asyncio.wait_for(task, 5)


async def test_a_conflict_is_retried_at_once_logged_at_debug_never_an_outage() -> None:
    clock = FakeClock()
    health = DbHealth(clock, lambda: 5.0, classify)
    deadlock = pymysql.err.OperationalError(1213, "Deadlock found (wsrep certification)")
    op = failing(deadlock, deadlock, deadlock)
    with capture_logs() as logs:
        assert await drive(clock, health.call(op, what="claiming")) == "done"
    assert op.calls == 4 and health.counts[ErrorKind.CONFLICT] == 3
    assert not health.down and health.settled(0)
    assert {e["log_level"] for e in logs} == {"debug"}, logs


async def test_a_lasting_conflict_reaches_the_caller_without_an_outage() -> None:
    clock = FakeClock()
    health = DbHealth(clock, lambda: 5.0, classify)
    op = failing(*[pymysql.err.OperationalError(1205, "Lock wait timeout")] * 50)
    with pytest.raises(DatabaseFailure) as failure:
        await drive(clock, health.call(op, what="claiming"))
    assert failure.value.kind is ErrorKind.CONFLICT and op.calls == 6
    assert not health.down


async def test_an_outage_is_logged_once_then_reminded_then_ends_with_one_line() -> None:
    clock = FakeClock()
    health = DbHealth(clock, lambda: 5.0, classify)
    woken: list[bool] = []
    health.on_recovered(lambda: woken.append(True))
    gone = pymysql.err.OperationalError(2006, "MySQL server has gone away")
    with capture_logs() as logs:
        for _ in range(30):  # 30 failures over 90 s
            with pytest.raises(DatabaseFailure):
                await health.call(failing(gone), what="the probe")
            clock.advance(3)
        assert health.down and not health.settled(0)
        back = health.clock.monotonic()
        assert await health.call(failing(), what="the probe") == "done"
    events = [(e["log_level"], e["event"]) for e in logs]
    assert events == [
        ("error", "database unreachable; retrying with backoff"),
        ("error", "database still unreachable"),
        ("warning", "database reachable again"),
    ], events
    assert REMINDER_EVERY_S <= 90 and health.counts[ErrorKind.OUTAGE] == 30
    assert woken == [True] and not health.down
    assert not health.settled(10) and health.back_since == back
    clock.advance(10)
    assert health.settled(10)


async def test_our_own_timeout_is_an_outage() -> None:
    clock = FakeClock()
    health = DbHealth(clock, lambda: 0.01, classify)  # real seconds: asyncio.timeout is the loop's

    async def hung() -> None:
        await asyncio.Event().wait()

    with pytest.raises(DatabaseFailure) as failure:
        await health.call(hung, what="lease renewal")
    assert failure.value.kind is ErrorKind.OUTAGE and health.down


async def test_a_refused_row_is_not_an_outage_and_not_retried() -> None:
    health = DbHealth(FakeClock(), lambda: 5.0, classify)
    op = failing(pymysql.err.DataError(1406, "Data too long"))
    with pytest.raises(DatabaseFailure) as failure:
        await health.call(op, what="recording")
    assert failure.value.kind is ErrorKind.REFUSED and op.calls == 1 and not health.down


async def test_a_bug_is_raised_as_it_is() -> None:
    health = DbHealth(FakeClock(), lambda: 5.0, classify)
    op = failing(pymysql.err.ProgrammingError(1064, "syntax"))
    with pytest.raises(pymysql.err.ProgrammingError):
        await health.call(op, what="claiming")
    assert op.calls == 1 and not health.down and health.counts[ErrorKind.BUG] == 1


def test_backoff_is_capped_and_jittered() -> None:
    health = DbHealth(FakeClock(), lambda: 5.0, classify)
    delays = [health.backoff_s(0.5, n) for n in range(1, 30)]
    assert all(d <= 10.0 for d in delays) and max(delays) > 5.0
    assert 0.25 <= delays[0] <= 0.5
    assert len({round(health.backoff_s(4.0, 3), 6) for _ in range(20)}) > 1  # jitter


def test_counters_per_kind_are_readable_for_metrics() -> None:
    health = DbHealth(FakeClock(), lambda: 5.0, classify)
    assert health.errors_total() == {"conflict": 0, "outage": 0, "refused": 0, "bug": 0}
    health.counts[ErrorKind.OUTAGE] += 2
    assert health.errors_total()["outage"] == 2


async def test_the_start_up_wait_backs_off_through_the_policy_then_exits_75() -> None:
    from cronloop import exitcodes
    from cronloop.cli.bootstrap import ExitError, wait_for_database

    clock = FakeClock()
    engine = create_async_engine("mysql+aiomysql://root@127.0.0.1:1/test")
    try:
        with capture_logs() as logs:
            waiting = asyncio.ensure_future(wait_for_database(engine, 30, clock))
            for _ in range(400):
                if waiting.done():
                    break
                await asyncio.sleep(0.005)
                clock.advance(0.5)
            with pytest.raises(ExitError) as exited:
                await asyncio.wait_for(waiting, 5)
    finally:
        await engine.dispose()
    assert exited.value.exit_code == exitcodes.TEMPFAIL
    assert "unreachable for 30s" in str(exited.value)
    errors = [e["event"] for e in logs if e["log_level"] == "error"]
    assert errors == ["database unreachable; retrying with backoff"], errors  # once
    assert clock.monotonic() - 1000 <= 31  # gave up at the deadline, not after it


async def test_a_cancel_the_driver_turned_into_an_error_is_still_a_cancel() -> None:
    """SQLAlchemy rolls back on the way out of a transaction; when the cancel closed the
    connection under it (aiomysql does), the rollback's error replaces the CancelledError.
    Taken for an outage, that cancel was lost: the housekeeping side loop went on to its
    next sleep, and `run --once` hung until the watchdog killed it (exit 70)."""
    health = DbHealth(FakeClock(), lambda: 5.0, classify)
    started = asyncio.Event()

    async def op() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise wrapped(pymysql.err.InterfaceError(0, "")) from None

    task = asyncio.ensure_future(health.call(op, what="reaping"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert not health.down and sum(health.counts.values()) == 0


async def test_a_cancel_a_driver_swallowed_is_still_a_cancel() -> None:
    health = DbHealth(FakeClock(), lambda: 5.0, classify)
    started = asyncio.Event()

    async def op() -> str:
        started.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        return "done anyway"

    task = asyncio.ensure_future(health.call(op, what="reaping"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_a_timeout_is_not_taken_for_a_cancel() -> None:
    """`asyncio.timeout` cancels too, then takes its cancel back: an outage, as before."""
    health = DbHealth(FakeClock(), lambda: 0.01, classify)

    async def hung() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise wrapped(pymysql.err.InterfaceError(0, "")) from None

    with pytest.raises(DatabaseFailure) as failure:
        await health.call(hung, what="lease renewal")
    assert failure.value.kind is ErrorKind.OUTAGE
