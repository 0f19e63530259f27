"""When a task runs next: periodic (`Every`), weekly at a local time (`Weekly`), or cron (`Cron`).

Pure on purpose: the clock is always passed in, so the supervisor, the store and the tests
all agree on "now" and every rule here can be tested at any instant (DST changes included).
Instants are timezone-aware UTC in and out; local time only exists inside `Weekly`/`Cron`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

MISSED_CAP = 10_000
"""`missed` is informative (logs, status), so counting stops here rather than cost time."""
MAX_PERIOD = timedelta(days=36_600)
"""Beyond ~100 years `prev + period` overflows `datetime`; refuse it at configuration time."""

DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_INDEX = {n: i for i, n in enumerate(DAY_NAMES)} | {n[:3]: i for i, n in enumerate(DAY_NAMES)}
_AT_RE = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_EVERY_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([smhd]?)", re.IGNORECASE)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_CRON_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_ETC_TIMEZONE = Path("/etc/timezone")
_ETC_LOCALTIME = Path("/etc/localtime")


class ScheduleError(ValueError):
    """A schedule setting is wrong; the task gets `disabled` with this text, the worker lives on."""


@dataclass(frozen=True)
class NextRun:
    at: datetime
    missed: int


@runtime_checkable
class Schedule(Protocol):
    def next_after(self, previous_planned: datetime | None, now: datetime) -> NextRun: ...
    def first_run(self, now: datetime) -> datetime: ...
    def describe(self) -> str: ...
    def period_s(self) -> float: ...


def _utc(value: datetime, name: str) -> datetime:
    """Naive datetimes are refused: guessing their zone is the ambiguity iTop suffered from."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}={value!r} is naive; pass a timezone-aware UTC datetime")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class Every:
    period: timedelta

    def __post_init__(self) -> None:
        if not timedelta(0) < self.period <= MAX_PERIOD:
            raise ScheduleError(f"every={self.period} must be > 0 and <= {MAX_PERIOD.days} days")

    def first_run(self, now: datetime) -> datetime:
        return _utc(now, "now")

    def next_after(self, previous_planned: datetime | None, now: datetime) -> NextRun:
        """iTop's rule: planned + k*period, smallest k >= 1 landing after now (no drift)."""
        now = _utc(now, "now")
        if previous_planned is None:
            return NextRun(now, 0)
        prev = _utc(previous_planned, "previous_planned")
        late = (now - prev) // timedelta(microseconds=1)
        step = self.period // timedelta(microseconds=1)
        k = late // step + 1 if late >= 0 else 1
        return NextRun(prev + k * self.period, min(k - 1, MISSED_CAP))

    def describe(self) -> str:
        seconds, micro = divmod(self.period // timedelta(microseconds=1), 1_000_000)
        text = f"{seconds}.{micro:06d}".rstrip("0") if micro else str(seconds)
        return f"every {text}s"

    def period_s(self) -> float:
        return self.period.total_seconds()


@dataclass(frozen=True)
class Weekly:
    """Local wall-clock time on some week days (0 = Monday), like iTop's `time`/`week_days`.

    DST: each matching day runs once, at `at` read with fold=0. A time inside the spring
    gap therefore runs at the instant the old offset designates (02:30 -> 03:30 local);
    an ambiguous time runs at its first occurrence only. No day is ever skipped or doubled.
    """

    at: time
    days: frozenset[int]
    tz: ZoneInfo

    def __post_init__(self) -> None:
        if self.at.tzinfo is not None:
            raise ScheduleError(f"at={self.at} must be a local time without tzinfo")
        if not self.days or not self.days <= frozenset(range(7)):
            raise ScheduleError(f"days={sorted(self.days)} must be a non-empty subset of 0..6")

    def _instant(self, day: date) -> datetime:
        return datetime.combine(day, self.at.replace(fold=0), tzinfo=self.tz).astimezone(UTC)

    def _next(self, after: datetime) -> tuple[date, datetime]:
        # Start one day early: a midnight DST gap can push yesterday's slot past midnight.
        local_day = after.astimezone(self.tz).date()
        for offset in range(-1, 8):
            day = local_day + timedelta(days=offset)
            if day.weekday() in self.days and (at := self._instant(day)) > after:
                return day, at
        raise AssertionError("unreachable: days is non-empty")  # pragma: no cover

    def _count_days(self, start: date, end: date) -> int:
        """Matching days in [start, end), arithmetically so a years-old `prev` costs nothing."""
        weeks, rest = divmod((end - start).days, 7)
        extra = sum((start.weekday() + i) % 7 in self.days for i in range(rest))
        return weeks * len(self.days) + extra

    def first_run(self, now: datetime) -> datetime:
        return self._next(_utc(now, "now"))[1]

    def next_after(self, previous_planned: datetime | None, now: datetime) -> NextRun:
        day, at = self._next(_utc(now, "now"))
        if previous_planned is None:
            return NextRun(at, 0)
        first_day, first_at = self._next(_utc(previous_planned, "previous_planned"))
        missed = self._count_days(first_day, day) if first_at < at else 0
        return NextRun(at, min(missed, MISSED_CAP))

    def describe(self) -> str:
        hhmm = self.at.isoformat(timespec="minutes" if not self.at.second else "seconds")
        names = ",".join(DAY_NAMES[d][:3] for d in sorted(self.days))
        return f"weekly {hhmm} {names} ({self.tz})"

    def period_s(self) -> float:
        ordered = sorted(self.days)
        gaps = [(b - a) % 7 or 7 for a, b in pairwise([*ordered, ordered[0]])]
        return float(min(gaps) * 86400)


@dataclass(frozen=True)
class Cron:
    """A standard 5-field cron expression in `tz`, computed by cronsim (Debian cron DST rules).

    Fixed-time entries (minute and hour not starting with '*') follow wall time: inside the
    spring gap they run at the first minute after it (02:30 -> 03:00 local), and in the
    repeated hour they run once (first occurrence). Wildcard-minute/hour entries follow
    real time: `*/5` keeps firing every 5 minutes through the gap and the repeated hour.
    """

    expr: str
    tz: ZoneInfo

    def __post_init__(self) -> None:
        fields = self._expanded.split()
        if len(fields) != 5:
            raise ScheduleError(
                f"cron={self.expr!r} must have 5 fields (minute hour day month weekday)"
                " or be one of " + ", ".join(_CRON_ALIASES)
            )
        try:
            next(CronSim(self._expanded, datetime(2001, 1, 1, tzinfo=self.tz)))
        except (CronSimError, ValueError) as exc:
            raise ScheduleError(f"cron={self.expr!r}: {exc}") from None
        except StopIteration:
            raise ScheduleError(f"cron={self.expr!r} never fires") from None

    @property
    def _expanded(self) -> str:
        text = " ".join(self.expr.split())
        return _CRON_ALIASES.get(text.lower(), text)

    def _after(self, after: datetime) -> Iterator[datetime]:
        """Occurrences > `after`, in order. cronsim works on naive wall time for fixed-time
        entries, so from inside the repeated hour it can yield the first pass (already past):
        those are dropped here."""
        last = after
        for local in CronSim(self._expanded, after.astimezone(self.tz)):
            at = local.astimezone(UTC)
            if at > last:
                last = at
                yield at

    def first_run(self, now: datetime) -> datetime:
        at = next(self._after(_utc(now, "now")), None)
        if at is None:  # cronsim gives up after 50 years without a match
            raise ScheduleError(f"cron={self.expr!r} never fires after {now}")
        return at

    def next_after(self, previous_planned: datetime | None, now: datetime) -> NextRun:
        at = self.first_run(now)
        if previous_planned is None:
            return NextRun(at, 0)
        missed = 0
        for slot in self._after(_utc(previous_planned, "previous_planned")):
            if slot >= at or missed >= MISSED_CAP:
                break
            missed += 1
        return NextRun(at, missed)

    def describe(self) -> str:
        return f"cron {' '.join(self.expr.split())} ({self.tz})"

    def period_s(self) -> float:
        """The smallest of the first gaps after a fixed date: stable, and good enough to cap
        a retry backoff."""
        slots = self._after(datetime(2001, 1, 1, tzinfo=UTC))
        firsts = [next(slots) for _ in range(6)]
        return min((b - a).total_seconds() for a, b in pairwise(firsts))


def parse_every(value: float | int | timedelta | str) -> Every:
    """Seconds as a number or text, or text with a unit, because config files hold text."""
    bad = ScheduleError(f"every={value!r} is not a positive duration (seconds, or 90s/5m/2h/1d)")
    if isinstance(value, timedelta):
        return Every(value)
    if isinstance(value, bool):
        raise bad
    if isinstance(value, str):
        match = _EVERY_RE.fullmatch(value.strip())
        if match is None:
            raise bad
        seconds = float(match[1]) * _UNIT_S[match[2].lower()]
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_PERIOD.total_seconds():
        raise bad
    period = timedelta(seconds=seconds)
    if period <= timedelta(0):
        raise bad
    return Every(period)


def parse_at(text: str) -> time:
    """Two-digit HH:MM only, as iTop demands: '9:30' is refused, not guessed."""
    match = _AT_RE.fullmatch(text.strip())
    if match is None:
        raise ScheduleError(f"at={text!r} is not HH:MM (24-hour, two digits)")
    return time(int(match[1]), int(match[2]))


def parse_days(text: str | None) -> frozenset[int]:
    """English day names or 3-letter abbreviations, comma-separated, ranges allowed
    (wrapping, e.g. 'fri-mon'); empty means every day."""
    days: set[int] = set()
    for word in (text or "").split(","):
        word = word.strip().lower()
        if not word:
            continue
        ends = [end.strip() for end in word.split("-", 1)]
        for end in ends:
            if end not in _DAY_INDEX:
                raise ScheduleError(f"unknown week day {end!r} in days={text!r}")
        first, last = _DAY_INDEX[ends[0]], _DAY_INDEX[ends[-1]]
        days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
    return frozenset(days) or frozenset(range(7))


def parse_schedule(
    *,
    every: float | int | timedelta | str | None = None,
    at: str | None = None,
    days: str | None = None,
    cron: str | None = None,
    tz: ZoneInfo,
) -> Schedule:
    """One entry point for settings and `@task` so both validate identically."""
    if sum(x is not None for x in (every, at, cron)) != 1:
        raise ScheduleError("give exactly one of every=, at=, cron=")
    if days is not None and at is None:
        raise ScheduleError("days= only goes with at=")
    if every is not None:
        return parse_every(every)
    if at is not None:
        return Weekly(parse_at(at), parse_days(days), tz)
    assert cron is not None
    return Cron(cron, tz)


def _zone(key: str | None) -> ZoneInfo | None:
    if not key:
        return None
    try:
        return ZoneInfo(key)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return None


def _zone_from_path(path: str) -> ZoneInfo | None:
    _, sep, key = path.rpartition("zoneinfo/")
    return _zone(key) if sep else None


def system_timezone() -> ZoneInfo:
    """The host's zone, found the way libc does, because admins set `time` in local time."""
    tz_env = os.environ.get("TZ", "").removeprefix(":")
    found = _zone_from_path(tz_env) if tz_env.startswith("/") else _zone(tz_env)
    if found is None:
        try:
            found = _zone(_ETC_TIMEZONE.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            found = None
    if found is None:
        try:
            found = _zone_from_path(os.readlink(_ETC_LOCALTIME))
        except OSError:
            found = None
    return found or ZoneInfo("UTC")


def resolve_timezone(name: str | None) -> ZoneInfo:
    """A configured zone name, or the host's; a typo must fail loudly, not fall back to UTC."""
    if name is None or not name.strip():
        return system_timezone()
    zone = _zone(name.strip())
    if zone is None:
        raise ScheduleError(f"unknown time zone {name!r} (expected e.g. 'Europe/Paris')")
    return zone
