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
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop import exitcodes
from cronloop.definitions.context import TaskContext
from cronloop.domain.clock import FakeClock
from cronloop.domain.freetext import MAX_TEXT_CHARS, bounded, traceback_text
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
