"""What a task returns or raises never crashes the runner (issue 10 item 2), on SQLite and
on real MariaDB: results and exceptions whose ``str()`` raises or returns a non-string,
huge ones, long exception chains, text no database stores as it is. Each run is recorded
with valid, bounded text, and the run's batch and `--once` end as usual."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop import exitcodes
from cronloop.config.settings import Settings
from cronloop.definitions.context import TaskContext
from cronloop.domain.clock import FakeClock
from cronloop.domain.freetext import MAX_TEXT_CHARS, bounded, traceback_text
from cronloop.store.sql.engine import create_engine
from cronloop.store.sql.errors import ErrorKind
from cronloop.store.sql.migrate import upgrade
from cronloop.store.sql.tables import runs, tasks
from tests.unit.runtime.test_recording import Funcs, returning, supervisor


class StrRaises:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class StrAndReprRaise(StrRaises):
    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class StrNotString:
    def __str__(self) -> Any:
        return 42


class HugeStr:
    def __str__(self) -> str:
        return "h" * 3_000_000


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise ValueError("cannot say")


def returns(value: object) -> Callable[..., Any]:
    async def task(ctx: TaskContext) -> object:
        return value

    return task


def raises(make: Callable[[], BaseException]) -> Callable[..., Any]:
    async def task(ctx: TaskContext) -> None:
        raise make()

    return task


def long_chain(depth: int = 20_000) -> BaseException:
    exc: BaseException | None = None
    for i in range(depth):
        nxt = KeyError(i)
        nxt.__context__ = exc
        exc = nxt
    assert exc is not None
    return exc


HOSTILE = {
    "str-raises": (returns(StrRaises()), "success", "<str() failed>"),
    "str-and-repr-raise": (returns(StrAndReprRaise()), "success", "<unprintable StrAndReprRaise"),
    "str-not-a-string": (returns(StrNotString()), "success", "<str() failed>"),
    "huge-str": (returns(HugeStr()), "success", "truncated: 3000000 characters"),
    "exception-str-raises": (raises(UnprintableError), "failed", "UnprintableError: <str()"),
    "long-exception-chain": (raises(long_chain), "failed", "KeyError: 19999"),
    "nul-and-surrogate": (returns("a\x00b \udcff"), "success", "a\\x00b \\udcff"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_a_hostile_result_is_recorded_and_never_crashes_the_runner(
    engine: AsyncEngine, case: str
) -> None:
    func, outcome, shown = HOSTILE[case]
    funcs: Funcs = {"bad": func, **{f"ok{i}": returning(f"fine {i}") for i in range(3)}}
    sup = await supervisor(engine, FakeClock(), funcs)
    assert await asyncio.wait_for(sup.run(), 30) == exitcodes.OK
    states = {s.name: s for s in await sup.store.status()}
    assert not any(s.running for s in states.values())
    assert all(states[f"ok{i}"].last_message == f"fine {i}" for i in range(3))
    bad = states["bad"]
    assert bad.last_outcome == outcome and bad.runs == 1, bad
    text = bad.last_message if outcome == "success" else bad.last_error
    assert text is not None and shown in text and len(text) <= MAX_TEXT_CHARS
    [entry] = await sup.store.history("bad")
    assert entry.outcome == outcome


def test_a_long_traceback_is_cut_with_a_marker() -> None:
    text = traceback_text(long_chain(), max_chars=10_000)
    assert len(text) < 10_100 and text.endswith("[traceback truncated]")


@given(st.text(max_size=300), st.integers(min_value=60, max_value=400))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_bounded_text_is_valid_utf8_and_within_its_bound(text: str, max_chars: int) -> None:
    out = bounded(text, max_chars)
    out.encode("utf-8")  # never raises: lone surrogates were escaped
    assert "\x00" not in out and len(out) <= max_chars
    plain = "\x00" not in text and not any("\ud800" <= c <= "\udfff" for c in text)
    if plain and len(text) <= max_chars:
        assert out == text  # valid text within the bound is kept as it is
    elif len(out) < len(text) or not plain:
        assert out != text


# -- property: anything at all through the real runner and recorder, on both databases -------

VALUES = st.one_of(
    st.none(),
    st.text(max_size=200),
    # at the bound, with characters of up to 4 bytes (MariaDB's TEXT holds 65,535 bytes)
    st.builds(lambda c, n: c * n, st.characters(codec="utf-8"), st.integers(15_990, 16_010)),
    st.binary(max_size=40),
    st.integers() | st.floats(),
    st.lists(st.text(max_size=8), max_size=4),
    st.builds(StrRaises) | st.builds(StrAndReprRaise) | st.builds(StrNotString),
    st.builds(RuntimeError, st.text(max_size=100)),
    st.builds(UnprintableError),
)


def thrower(value: object) -> Callable[..., Any]:
    async def task(ctx: TaskContext) -> object:
        if isinstance(value, BaseException):
            raise value
        return value

    return task


async def _record_all(url: str, values: list[object]) -> None:
    engine = create_engine(Settings(database_url=url))
    try:
        await upgrade(engine)
        async with engine.begin() as conn:
            await conn.execute(delete(runs))
            await conn.execute(delete(tasks))
        funcs: Funcs = {f"v{i}": thrower(v) for i, v in enumerate(values)}
        sup = await supervisor(engine, FakeClock(), funcs)
        assert await asyncio.wait_for(sup.run(), 30) == exitcodes.OK
        states = {s.name: s for s in await sup.store.status()}
        for i, value in enumerate(values):
            state = states[f"v{i}"]
            failed = isinstance(value, BaseException)
            assert state.last_outcome == ("failed" if failed else "success"), state
            text = state.last_error if failed else state.last_message
            assert (text is None) == (value is None)
            if text is not None:
                assert len(text) <= MAX_TEXT_CHARS and "database refused" not in text
                text.encode("utf-8")
        assert sup.health.counts[ErrorKind.REFUSED] == 0
    finally:
        await engine.dispose()


@given(st.lists(VALUES, min_size=1, max_size=6))
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
def test_whatever_a_task_returns_or_raises_lands_as_valid_bounded_text(
    db_url: str, values: list[object]
) -> None:
    asyncio.run(_record_all(db_url, values))
