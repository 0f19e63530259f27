"""cronloop.domain.schedule: iTop's next-run rules, DST behaviour, parsing, time zones."""

from __future__ import annotations

import os
from datetime import UTC, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cronloop.domain import schedule
from cronloop.domain.schedule import (
    MISSED_CAP,
    Cron,
    Every,
    NextRun,
    Schedule,
    ScheduleError,
    Weekly,
    parse_schedule,
    resolve_timezone,
    system_timezone,
)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
UTC_ZONE = ZoneInfo("UTC")
HOUR = timedelta(hours=1)
WEEKDAYS = frozenset(range(5))


def local(zone: ZoneInfo | timezone, y: int, mo: int, d: int, *hms: int) -> datetime:
    h, mi, s, us = (*hms, 0, 0, 0, 0)[:4]
    return datetime(y, mo, d, h, mi, s, us, tzinfo=zone)


def utc(y: int, mo: int, d: int, *hms: int) -> datetime:
    return local(UTC, y, mo, d, *hms)


def hhmm(at: datetime, zone: ZoneInfo) -> str:
    return at.astimezone(zone).strftime("%a %Y-%m-%d %H:%M %Z")


def run_forever(sched: Schedule, start: datetime, until: datetime) -> list[datetime]:
    """What the supervisor does: each run starts on time and plans the next from its slot."""
    runs: list[datetime] = []
    planned = sched.first_run(start)
    while planned < until:
        runs.append(planned)
        planned = sched.next_after(planned, planned + timedelta(seconds=1)).at
    return runs


# --- Every ---------------------------------------------------------------------------------


def test_every_no_drift_a_late_finish_does_not_shift_the_next_run() -> None:
    # Planned 10:00, finished at 10:07: the next run stays on the hour.
    assert Every(HOUR).next_after(utc(2026, 1, 5, 10), utc(2026, 1, 5, 10, 7)) == NextRun(
        utc(2026, 1, 5, 11), 0
    )


def test_every_skips_missed_slots_and_counts_them() -> None:
    result = Every(HOUR).next_after(utc(2026, 1, 5, 10), utc(2026, 1, 5, 13, 30))
    assert result == NextRun(utc(2026, 1, 5, 14), 3)  # 11:00, 12:00, 13:00 skipped


def test_every_exactly_at_the_boundary_goes_to_the_following_slot() -> None:
    # Strictly after now: at exactly prev + period, that slot counts as reached (missed).
    sched = Every(HOUR)
    assert sched.next_after(utc(2026, 1, 5, 10), utc(2026, 1, 5, 11)) == NextRun(
        utc(2026, 1, 5, 12), 1
    )
    just_before = utc(2026, 1, 5, 11) - timedelta(microseconds=1)
    assert sched.next_after(utc(2026, 1, 5, 10), just_before) == NextRun(utc(2026, 1, 5, 11), 0)


def test_every_without_previous_runs_now_and_first_run_is_now() -> None:
    now = utc(2026, 1, 5, 10, 3, 4, 5)
    assert Every(HOUR).next_after(None, now) == NextRun(now, 0)
    assert Every(HOUR).first_run(now) == now


def test_every_previous_in_the_future_plans_one_period_after_it() -> None:
    assert Every(HOUR).next_after(utc(2026, 1, 5, 12), utc(2026, 1, 5, 10)) == NextRun(
        utc(2026, 1, 5, 13), 0
    )


def test_every_float_period() -> None:
    start = utc(2026, 1, 5, 10)
    result = Every(timedelta(seconds=2.5)).next_after(start, start + timedelta(seconds=6))
    assert result == NextRun(start + timedelta(seconds=7.5), 2)


def test_every_missed_is_capped_and_the_result_is_still_exact() -> None:
    prev, now = utc(2000, 1, 1), utc(2026, 1, 5, 10, 0, 0, 400_000)
    result = Every(timedelta(seconds=1)).next_after(prev, now)
    assert result == NextRun(utc(2026, 1, 5, 10, 0, 1), MISSED_CAP)


@pytest.mark.parametrize("period", [timedelta(0), timedelta(seconds=-1), timedelta(days=40_000)])
def test_every_rejects_bad_periods(period: timedelta) -> None:
    with pytest.raises(ScheduleError, match="every="):
        Every(period)


@given(
    prev=st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
    now=st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
    period_us=st.integers(1, 10 * 86_400_000_000),
)
def test_every_property(prev: datetime, now: datetime, period_us: int) -> None:
    period = timedelta(microseconds=period_us)
    result = Every(period).next_after(prev, now)
    k, rest = divmod(result.at - prev, period)
    assert result.at > now
    assert rest == timedelta(0) and k >= 1
    assert result.at - period <= max(now, prev)  # the smallest such k
    assert result.missed == min(k - 1, MISSED_CAP)
    assert result.at.tzinfo is UTC


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (3600, 3600),
        (2.5, 2.5),
        ("3600", 3600),
        ("2.5", 2.5),
        ("90s", 90),
        ("5m", 300),
        (" 2 H ", 7200),
        ("1d", 86400),
        (".5", 0.5),
        (timedelta(minutes=5), 300),
    ],
)
def test_parse_every(value: float | str | timedelta, seconds: float) -> None:
    sched = parse_schedule(every=value, tz=UTC_ZONE)
    assert sched == Every(timedelta(seconds=seconds))


@pytest.mark.parametrize(
    "value",
    [0, -1, 0.0, "0", "", "abc", "5x", "-5", "1e3", "5 m s", True, float("nan"), float("inf")],
)
def test_parse_every_rejects(value: float | str) -> None:
    with pytest.raises(ScheduleError, match=f"every={value!r}".replace("(", r"\(")):
        parse_schedule(every=value, tz=UTC_ZONE)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"every": 5, "at": "10:00"}, {"at": "10:00", "cron": "* * * * *"}, {"days": "mon"}],
)
def test_parse_schedule_needs_exactly_one_rule(kwargs: dict[str, str]) -> None:
    with pytest.raises(ScheduleError, match="exactly one of every=, at=, cron="):
        parse_schedule(tz=UTC_ZONE, **kwargs)


@pytest.mark.parametrize("kwargs", [{"every": 5}, {"cron": "* * * * *"}])
def test_days_only_go_with_at(kwargs: dict[str, str]) -> None:
    with pytest.raises(ScheduleError, match="days= only goes with at="):
        parse_schedule(days="mon", tz=UTC_ZONE, **kwargs)


@pytest.mark.parametrize("at", ["9:30", "24:00", "12:60", "ab:cd", "", "12:3", "12:30:00", "١٢:٣٠"])
def test_bad_at_is_refused_naming_it(at: str) -> None:
    with pytest.raises(ScheduleError) as err:
        parse_schedule(at=at, tz=UTC_ZONE)
    assert str(err.value) == f"at={at!r} is not HH:MM (24-hour, two digits)"


@pytest.mark.parametrize(
    ("days", "expected"),
    [
        (None, {0, 1, 2, 3, 4, 5, 6}),
        ("", {0, 1, 2, 3, 4, 5, 6}),
        ("Monday, TUE ,wed", {0, 1, 2}),
        ("monday,tuesday,wednesday,thursday,friday", {0, 1, 2, 3, 4}),
        ("mon,Monday,mon", {0}),
        ("monday-friday", {0, 1, 2, 3, 4}),
        ("fri - mon", {4, 5, 6, 0}),
        ("sun,", {6}),
    ],
)
def test_parse_days(days: str | None, expected: set[int]) -> None:
    sched = parse_schedule(at="23:30", days=days, tz=UTC_ZONE)
    assert isinstance(sched, Weekly)
    assert sched.days == expected
    assert sched.at == time(23, 30)


@pytest.mark.parametrize(
    ("days", "bad"), [("mondey,tuesday", "mondey"), ("mon,funday", "funday"), ("mon-fry", "fry")]
)
def test_unknown_day_names_the_word(days: str, bad: str) -> None:
    with pytest.raises(ScheduleError) as err:
        parse_schedule(at="23:30", days=days, tz=UTC_ZONE)
    assert str(err.value) == f"unknown week day {bad!r} in days={days!r}"


# --- Weekly --------------------------------------------------------------------------------

BACKUP = Weekly(time(23, 30), WEEKDAYS, UTC_ZONE)  # iTop's BackupExec default


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2026, 1, 9, 23, 30), utc(2026, 1, 12, 23, 30)),  # Friday at the time -> Monday
        (utc(2026, 1, 9, 23, 29), utc(2026, 1, 9, 23, 30)),  # Friday just before -> Friday
        (utc(2026, 1, 10, 12), utc(2026, 1, 12, 23, 30)),  # Saturday -> Monday
        (utc(2026, 1, 12, 23, 30), utc(2026, 1, 13, 23, 30)),  # Monday at the time -> Tuesday
        (utc(2026, 1, 12, 23, 30, 0, 1), utc(2026, 1, 13, 23, 30)),
    ],
)
def test_weekly_itop_vectors(now: datetime, expected: datetime) -> None:
    assert BACKUP.first_run(now) == expected
    assert BACKUP.next_after(None, now) == NextRun(expected, 0)


def test_weekly_default_is_every_day() -> None:
    sched = parse_schedule(at="23:30", tz=UTC_ZONE)
    assert sched.first_run(utc(2026, 1, 10, 12)) == utc(2026, 1, 10, 23, 30)  # a Saturday
    assert sched.first_run(utc(2026, 1, 11, 23, 31)) == utc(2026, 1, 12, 23, 30)


def test_weekly_counts_missed_days_only_on_matching_days() -> None:
    # Planned Friday 23:30, the worker was down until Wednesday: Mon and Tue were missed.
    assert BACKUP.next_after(utc(2026, 1, 9, 23, 30), utc(2026, 1, 14, 10)) == NextRun(
        utc(2026, 1, 14, 23, 30), 2
    )
    assert BACKUP.next_after(utc(2026, 1, 9, 23, 30), utc(2026, 1, 12, 23, 29)).missed == 0


@pytest.mark.parametrize("years", [0, 1, 3])
def test_weekly_missed_matches_a_brute_force_count(years: int) -> None:
    sched = Weekly(time(2, 30), frozenset({0, 3, 6}), PARIS)
    prev, now = local(PARIS, 2023, 2, 3, 17), local(PARIS, 2023 + years, 11, 7, 4)
    result = sched.next_after(prev, now)
    slots, day = 0, prev.date()
    while day <= result.at.date():
        at = datetime.combine(day, time(2, 30), tzinfo=PARIS)
        slots += day.weekday() in {0, 3, 6} and prev < at < result.at
        day += timedelta(days=1)
    assert result.missed == slots > 0


def test_weekly_missed_is_capped() -> None:
    sched = Weekly(time(12, 0), frozenset(range(7)), UTC_ZONE)
    assert sched.next_after(utc(1970, 1, 1), utc(2026, 1, 1)).missed == MISSED_CAP


def test_weekly_paris_spring_gap_runs_after_the_gap_once() -> None:
    sched = parse_schedule(at="02:30", tz=PARIS)
    runs = run_forever(sched, utc(2026, 3, 27, 12), utc(2026, 3, 31))
    assert [hhmm(r, PARIS) for r in runs] == [
        "Sat 2026-03-28 02:30 CET",
        "Sun 2026-03-29 03:30 CEST",  # 02:30 does not exist that night
        "Mon 2026-03-30 02:30 CEST",
    ]


def test_weekly_paris_fall_back_runs_once_at_the_first_occurrence() -> None:
    sched = parse_schedule(at="02:30", tz=PARIS)
    runs = run_forever(sched, utc(2026, 10, 24, 12), utc(2026, 10, 27))
    assert runs == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    assert hhmm(runs[0], PARIS) == "Sun 2026-10-25 02:30 CEST"
    # Woken during the repeated hour (second 02:15, 02:30): nothing more that day.
    for now in (utc(2026, 10, 25, 1, 15), utc(2026, 10, 25, 1, 30)):
        assert sched.first_run(now) == utc(2026, 10, 26, 1, 30)


def test_weekly_new_york_gap_and_overlap() -> None:
    gap = parse_schedule(at="02:30", tz=NEW_YORK)
    assert hhmm(gap.first_run(utc(2026, 3, 8, 0)), NEW_YORK) == "Sun 2026-03-08 03:30 EDT"
    # New York repeats 01:00-02:00, so 01:30 is the ambiguous time there.
    overlap = parse_schedule(at="01:30", tz=NEW_YORK)
    runs = run_forever(overlap, utc(2026, 10, 31, 12), utc(2026, 11, 3))
    assert [hhmm(r, NEW_YORK) for r in runs] == [
        "Sun 2026-11-01 01:30 EDT",
        "Mon 2026-11-02 01:30 EST",
    ]


@pytest.mark.parametrize(
    ("prev", "expected"),
    [
        (utc(2026, 3, 28, 8), utc(2026, 3, 29, 7)),  # CET -> CEST
        (utc(2026, 10, 24, 7), utc(2026, 10, 25, 8)),  # CEST -> CET
    ],
)
def test_weekly_daily_nine_keeps_local_time_across_dst(prev: datetime, expected: datetime) -> None:
    sched = parse_schedule(at="09:00", tz=PARIS)
    result = sched.next_after(prev, prev + timedelta(minutes=5))
    assert result == NextRun(expected, 0)
    assert result.at.astimezone(PARIS).time() == time(9, 0)


def test_weekly_rejects_bad_construction() -> None:
    with pytest.raises(ScheduleError, match="days="):
        Weekly(time(1, 0), frozenset(), UTC_ZONE)
    with pytest.raises(ScheduleError, match="days="):
        Weekly(time(1, 0), frozenset({7}), UTC_ZONE)
    with pytest.raises(ScheduleError, match="at="):
        Weekly(time(1, 0, tzinfo=UTC), WEEKDAYS, UTC_ZONE)


# --- Cron ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (utc(2026, 1, 5, 10, 7, 30), utc(2026, 1, 5, 10, 10)),
        (utc(2026, 1, 5, 10, 10), utc(2026, 1, 5, 10, 15)),  # strictly after now
        (utc(2026, 1, 5, 10, 9, 59, 999_999), utc(2026, 1, 5, 10, 10)),
        (utc(2026, 1, 5, 23, 58), utc(2026, 1, 6, 0, 0)),
    ],
)
def test_cron_every_five_minutes(now: datetime, expected: datetime) -> None:
    sched = parse_schedule(cron="*/5 * * * *", tz=UTC_ZONE)
    assert sched.first_run(now) == expected
    assert sched.next_after(None, now) == NextRun(expected, 0)


def test_cron_counts_missed_slots() -> None:
    sched = Cron("*/5 * * * *", UTC_ZONE)
    result = sched.next_after(utc(2026, 1, 5, 10), utc(2026, 1, 5, 10, 27))
    assert result == NextRun(utc(2026, 1, 5, 10, 30), 5)  # 10:05 .. 10:25
    assert sched.next_after(utc(2026, 1, 5, 10), utc(2026, 1, 5, 10, 1)).missed == 0


def test_cron_missed_is_capped() -> None:
    result = Cron("* * * * *", UTC_ZONE).next_after(utc(2026, 1, 1), utc(2026, 2, 1, 0, 0, 30))
    assert result == NextRun(utc(2026, 2, 1, 0, 1), MISSED_CAP)


def test_cron_fixed_time_in_the_spring_gap_runs_when_the_gap_ends() -> None:
    # Debian cron semantics (cronsim): 02:30 does not exist, the job runs at 03:00.
    sched = Cron("30 2 * * *", PARIS)
    runs = run_forever(sched, utc(2026, 3, 27, 12), utc(2026, 3, 31))
    assert [hhmm(r, PARIS) for r in runs] == [
        "Sat 2026-03-28 02:30 CET",
        "Sun 2026-03-29 03:00 CEST",
        "Mon 2026-03-30 02:30 CEST",
    ]


def test_cron_fixed_time_in_the_repeated_hour_runs_once() -> None:
    sched = Cron("30 2 * * *", PARIS)
    runs = run_forever(sched, utc(2026, 10, 24, 12), utc(2026, 10, 27))
    assert runs == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]
    # From inside the second pass, the first 02:30 is already past: never plan backwards.
    assert sched.first_run(utc(2026, 10, 25, 1, 15)) == utc(2026, 10, 26, 1, 30)


def test_cron_wildcard_hours_follow_real_time_through_dst() -> None:
    sched = Cron("*/30 * * * *", PARIS)
    fall = run_forever(sched, utc(2026, 10, 24, 23, 45), utc(2026, 10, 25, 2, 45))
    assert fall == [utc(2026, 10, 25, 0, 0) + i * timedelta(minutes=30) for i in range(6)]
    spring = run_forever(sched, utc(2026, 3, 29, 0, 15), utc(2026, 3, 29, 2, 15))
    assert spring == [utc(2026, 3, 29, 0, 30) + i * timedelta(minutes=30) for i in range(4)]


@pytest.mark.parametrize(
    ("alias", "expanded"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        (" @DAILY ", "0 0 * * *"),
    ],
)
def test_cron_aliases(alias: str, expanded: str) -> None:
    now = utc(2026, 6, 17, 12, 34)
    assert Cron(alias, PARIS).first_run(now) == Cron(expanded, PARIS).first_run(now)


def test_cron_daily_is_local_midnight() -> None:
    sched = parse_schedule(cron="@daily", tz=PARIS)
    assert sched.first_run(utc(2026, 6, 1, 12)) == utc(2026, 6, 1, 22)  # 00:00 CEST


def test_cron_day_names() -> None:
    sched = Cron("0 9 * * mon-fri", UTC_ZONE)
    assert sched.first_run(utc(2026, 1, 9, 10)) == utc(2026, 1, 12, 9)  # Friday -> Monday


@pytest.mark.parametrize(
    "expr",
    ["*/0 * * * *", "60 * * * *", "* * *", "0 0 0 * * *", "", "bogus", "0 0 31 2 *", "@reboot"],
)
def test_cron_invalid_expressions(expr: str) -> None:
    with pytest.raises(ScheduleError) as err:
        parse_schedule(cron=expr, tz=UTC_ZONE)
    assert f"cron={expr!r}" in str(err.value)


# --- shared behaviour ----------------------------------------------------------------------

ALL = [Every(HOUR), BACKUP, Cron("*/5 * * * *", UTC_ZONE)]


@pytest.mark.parametrize("sched", ALL)
def test_naive_datetimes_are_rejected(sched: Schedule) -> None:
    naive, aware = datetime(2026, 1, 5, 10), utc(2026, 1, 5, 10)
    with pytest.raises(ValueError, match="naive"):
        sched.first_run(naive)
    with pytest.raises(ValueError, match="naive"):
        sched.next_after(None, naive)
    with pytest.raises(ValueError, match="naive"):
        sched.next_after(naive, aware)


@pytest.mark.parametrize("sched", ALL)
def test_results_are_utc_even_from_other_offsets(sched: Schedule) -> None:
    plus2 = timezone(timedelta(hours=2))
    now = datetime(2026, 1, 5, 12, 7, tzinfo=plus2)
    result = sched.next_after(datetime(2026, 1, 5, 12, tzinfo=plus2), now)
    assert result.at.tzinfo is UTC and result.at > now
    assert sched.first_run(now).tzinfo is UTC
    assert isinstance(sched, Schedule)


@pytest.mark.parametrize(
    ("sched", "text"),
    [
        (Every(HOUR), "every 3600s"),
        (Every(timedelta(seconds=2.5)), "every 2.5s"),
        (Weekly(time(23, 30), WEEKDAYS, PARIS), "weekly 23:30 mon,tue,wed,thu,fri (Europe/Paris)"),
        (Weekly(time(7, 5), frozenset({6, 0}), UTC_ZONE), "weekly 07:05 mon,sun (UTC)"),
        (Weekly(time(7, 5, 9), frozenset({3}), UTC_ZONE), "weekly 07:05:09 thu (UTC)"),
        (Cron("*/5  * * * *", UTC_ZONE), "cron */5 * * * * (UTC)"),
        (Cron("@daily", PARIS), "cron @daily (Europe/Paris)"),
    ],
)
def test_describe(sched: Schedule, text: str) -> None:
    assert sched.describe() == text


@pytest.mark.parametrize(
    ("sched", "seconds"),
    [
        (Every(timedelta(seconds=2.5)), 2.5),
        (Weekly(time(1, 0), frozenset(range(7)), PARIS), 86400),
        (BACKUP, 86400),
        (Weekly(time(1, 0), frozenset({2}), PARIS), 7 * 86400),
        (Weekly(time(1, 0), frozenset({0, 2}), PARIS), 2 * 86400),
        (Cron("*/5 * * * *", PARIS), 300),
        (Cron("0 9 * * *", PARIS), 86400),
        (Cron("30 1,23 * * *", PARIS), 7200),
    ],
)
def test_period_s(sched: Schedule, seconds: float) -> None:
    assert sched.period_s() == seconds


# --- time zones ----------------------------------------------------------------------------


@pytest.fixture
def no_system_zone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("TZ", raising=False)
    monkeypatch.setattr(schedule, "_ETC_TIMEZONE", tmp_path / "timezone")
    monkeypatch.setattr(schedule, "_ETC_LOCALTIME", tmp_path / "localtime")
    return tmp_path


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("Europe/Paris", "Europe/Paris"),
        (":America/New_York", "America/New_York"),
        ("/usr/share/zoneinfo/Asia/Tokyo", "Asia/Tokyo"),
    ],
)
def test_system_timezone_honours_tz(
    no_system_zone: Path, monkeypatch: pytest.MonkeyPatch, value: str, key: str
) -> None:
    monkeypatch.setenv("TZ", value)
    assert system_timezone() == ZoneInfo(key)


def test_system_timezone_falls_back_to_etc_timezone(
    no_system_zone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Not/AZone")
    (no_system_zone / "timezone").write_text("Europe/Berlin\n")
    assert system_timezone() == ZoneInfo("Europe/Berlin")


def test_system_timezone_falls_back_to_localtime_link(no_system_zone: Path) -> None:
    os.symlink("../usr/share/zoneinfo/Australia/Sydney", no_system_zone / "localtime")
    (no_system_zone / "timezone").write_text("garbage\n")
    assert system_timezone() == ZoneInfo("Australia/Sydney")


def test_system_timezone_defaults_to_utc(no_system_zone: Path) -> None:
    assert system_timezone() == ZoneInfo("UTC")


def test_resolve_timezone(no_system_zone: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    assert resolve_timezone(None) == ZoneInfo("Asia/Kolkata")
    assert resolve_timezone("") == ZoneInfo("Asia/Kolkata")
    assert resolve_timezone(" Europe/Paris ") == PARIS


@pytest.mark.parametrize("name", ["Mars/Olympus", "Europe", "../etc/passwd", "/etc/localtime"])
def test_resolve_timezone_rejects_unknown_names(name: str) -> None:
    with pytest.raises(ScheduleError, match="unknown time zone") as err:
        resolve_timezone(name)
    assert repr(name) in str(err.value)
