"""`retry_conflicts` / `conflict_retry`: a lost race is run again, anything else is not."""

from __future__ import annotations

import pymysql.err  # type: ignore[import-untyped]
import pytest
from sqlalchemy import exc as sa_exc
from structlog.testing import capture_logs

from cronloop.store.sql.retry import (
    CONFLICT_RETRIES,
    CONFLICTS_SEEN,
    conflict_retry,
    retry_conflicts,
)

WSREP = pymysql.err.OperationalError(
    1213, "Deadlock: wsrep aborted transaction / WSREP detected deadlock/conflict"
)


def as_sqlalchemy(orig: BaseException) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError.instance("COMMIT", (), orig, pymysql.err.Error)  # type: ignore[arg-type]


async def test_a_certification_failure_is_retried_at_once_and_counted() -> None:
    calls = 0

    async def op() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise as_sqlalchemy(WSREP)
        return "done"

    before = CONFLICTS_SEEN["t1"]
    with capture_logs() as logs:
        assert await retry_conflicts(op, what="t1") == "done"
    assert calls == 3
    assert CONFLICTS_SEEN["t1"] - before == 2
    assert [e["log_level"] for e in logs] == ["debug", "debug"]


async def test_a_lasting_conflict_reaches_the_caller_after_the_bound() -> None:
    calls = 0

    @conflict_retry("t2")
    async def op() -> None:
        nonlocal calls
        calls += 1
        raise pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")

    with pytest.raises(pymysql.err.OperationalError):
        await op()
    assert calls == CONFLICT_RETRIES + 1


@pytest.mark.parametrize(
    "error",
    [
        pymysql.err.OperationalError(1047, "WSREP has not yet prepared node for application use"),
        pymysql.err.ProgrammingError(1146, "Table doesn't exist"),
        ValueError("a bug"),
    ],
)
async def test_outages_and_bugs_are_not_retried(error: Exception) -> None:
    calls = 0

    async def op() -> None:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)):
        await retry_conflicts(op, what="t3")
    assert calls == 1


async def test_also_retries_what_the_caller_names() -> None:
    calls = 0

    async def op() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise pymysql.err.IntegrityError(1062, "Duplicate entry")
        return calls

    assert await retry_conflicts(op, what="t4", also=lambda e: "Duplicate" in str(e)) == 2


async def test_races_still_lost_are_the_answer_lost_gives_where_losing_is_an_answer() -> None:
    """A claim whose rows senders on other Galera nodes win on every try claimed nothing:
    seen with three email senders on three nodes, the sixth lost race failed the run."""
    calls = 0

    @conflict_retry("t-lost", lost=lambda: "nothing claimed")
    async def claim() -> str:
        nonlocal calls
        calls += 1
        raise as_sqlalchemy(WSREP)

    assert await claim() == "nothing claimed"
    assert calls == CONFLICT_RETRIES + 1

    @conflict_retry("t-lost-bug", lost=lambda: "nothing claimed")
    async def broken() -> str:
        raise as_sqlalchemy(pymysql.err.ProgrammingError(1064, "syntax"))

    with pytest.raises(sa_exc.DBAPIError):
        await broken()
