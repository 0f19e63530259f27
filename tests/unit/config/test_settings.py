"""The settings model (cronloop.config.settings): defaults, sources and precedence,
aliases, value syntax, validation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from cronloop.config.settings import (
    ALIASES,
    SETTING_KEYS,
    ConfigError,
    Settings,
)
from tests.unit.config.settings_support import (
    EXPECTED_DEFAULTS,
    PASSWORD,
    isolated,  # noqa: F401  (a fixture)
    load,
    params,
    problems_of,
)

# ---------------------------------------------------------------- defaults


def test_defaults(tmp_path: Path) -> None:
    s = load()
    assert s == Settings()
    assert {key: getattr(s, key) for key in SETTING_KEYS} == EXPECTED_DEFAULTS
    assert dict(s.sources) == dict.fromkeys(EXPECTED_DEFAULTS, "default")
    assert s.param_files == ()
    assert dict(s.task_options) == {}


def test_setting_keys_are_exactly_the_documented_settings() -> None:
    assert set(SETTING_KEYS) == set(EXPECTED_DEFAULTS)
    assert dict(ALIASES) == {
        "cron_max_execution_time": "max_lifetime",
        "cron_sleep": "poll_interval",
    }


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().poll_interval = 3  # type: ignore[misc]


def test_config_error_has_exit_code_78_and_one_problem_per_line() -> None:
    err = ConfigError(["a: bad", "b: worse"])
    assert ConfigError.exit_code == 78
    assert err.problems == ("a: bad", "b: worse")
    assert str(err) == "a: bad\nb: worse"
    assert ConfigError("x: one\ny: two").problems == ("x: one", "y: two")


# ---------------------------------------------------------------- sources and precedence


def test_file_values_are_typed_and_sourced(tmp_path: Path) -> None:
    f = params(
        tmp_path / "a.params",
        "# comment\n"
        "poll_interval = 5 # seconds\n"
        "max_concurrency = 4\n"
        "verbose = 1\n"
        "task_modules = a.b, c ,\n"
        "timezone = Europe/Paris\n"
        "log_format = JSON\n",
    )
    s = load(f)
    assert (s.poll_interval, s.max_concurrency, s.verbose) == (5.0, 4, True)
    assert s.task_modules == ("a.b", "c")
    assert s.timezone == "Europe/Paris"
    assert s.log_format == "json"
    assert s.sources["poll_interval"] == f"file {f}:2"
    assert s.sources["max_concurrency"] == f"file {f}:3"
    assert s.sources["lease_s"] == "default"
    assert s.param_files == (str(f),)


@pytest.mark.parametrize(
    ("in_file", "in_env", "in_flag", "value", "source"),
    [
        (True, False, False, 3.0, "file"),
        (True, True, False, 4.0, "env CRONLOOP_POLL_INTERVAL"),
        (True, True, True, 5.0, "command line"),
        (False, True, True, 5.0, "command line"),
        (True, False, True, 5.0, "command line"),
        (False, False, False, 2.0, "default"),
    ],
)
def test_precedence_default_file_env_flag(
    tmp_path: Path, in_file: bool, in_env: bool, in_flag: bool, value: float, source: str
) -> None:
    f = params(tmp_path / "a.params", "poll_interval = 3\n" if in_file else "")
    env = {"CRONLOOP_POLL_INTERVAL": "4"} if in_env else {}
    flags = {"poll_interval": "5"} if in_flag else {}
    s = load(f, flags, env)
    assert s.poll_interval == value
    expected = f"file {f}:1" if source == "file" else source
    assert s.sources["poll_interval"] == expected


def test_several_files_later_wins(tmp_path: Path) -> None:
    a = params(tmp_path / "a.params", "poll_interval = 3\nmax_concurrency = 7\n")
    b = params(tmp_path / "b.params", "\npoll_interval = 4\n")
    s = load(f"{a},{b}")
    assert (s.poll_interval, s.max_concurrency) == (4.0, 7)
    assert s.sources["poll_interval"] == f"file {b}:2"
    assert s.sources["max_concurrency"] == f"file {a}:2"
    assert s.param_files == (str(a), str(b))


def test_env_setting_names_and_unknown_env_vars_are_ignored(tmp_path: Path) -> None:
    env = {
        "CRONLOOP_DATABASE_URL": "sqlite+aiosqlite:////tmp/x.db",
        "CRONLOOP_TASK_MODULES": "mymod,other.mod",
        "CRONLOOP_NOT_A_SETTING": "1",
        "CRONLOOP_TEST_MYSQL_URL": "mysql://x",
        "cronloop_poll_interval": "9",  # env names are case-sensitive: not ours
        "POLL_INTERVAL": "9",
    }
    s = load(env=env)
    assert s.database_url == "sqlite+aiosqlite:////tmp/x.db"
    assert s.task_modules == ("mymod", "other.mod")
    assert s.poll_interval == 2.0
    assert s.sources["database_url"] == "env CRONLOOP_DATABASE_URL"


def test_env_values_are_trimmed_for_settings(tmp_path: Path) -> None:
    assert load(env={"CRONLOOP_MAX_CONCURRENCY": " 4 "}).max_concurrency == 4


def test_flag_keys_are_normalised() -> None:
    s = load(overrides={"Max-Concurrency": "3", "--lease-s": "10"})
    assert (s.max_concurrency, s.lease_s) == (3, 10.0)
    assert s.sources["lease_s"] == "command line"


def test_reload_reflects_the_file_and_keeps_no_state(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "poll_interval = 3\n")
    first = load(f)
    assert load(f) == first
    params(f, "poll_interval = 7\n")
    assert load(f).poll_interval == 7.0
    assert first.poll_interval == 3.0


# ---------------------------------------------------------------- aliases


def test_aliases_in_file_env_and_flags(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "cron_sleep = 4\ncron_max_execution_time = 120\n")
    s = load(f)
    assert (s.poll_interval, s.max_lifetime) == (4.0, 120.0)
    assert s.sources["poll_interval"] == f"file {f}:1 (as cron_sleep)"
    assert s.sources["max_lifetime"] == f"file {f}:2 (as cron_max_execution_time)"

    s = load(env={"CRONLOOP_CRON_SLEEP": "6"})
    assert s.poll_interval == 6.0
    assert s.sources["poll_interval"] == "env CRONLOOP_CRON_SLEEP (as cron_sleep)"

    s = load(f, overrides={"cron-max-execution-time": "0"})
    assert s.max_lifetime == 0.0
    assert s.sources["max_lifetime"] == "command line (as cron_max_execution_time)"


def test_alias_and_canonical_in_one_file_later_line_wins(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "poll_interval = 3\ncron_sleep = 4\n")
    assert load(f).poll_interval == 4.0
    f = params(tmp_path / "b.params", "cron_sleep = 4\npoll_interval = 3\n")
    assert load(f).poll_interval == 3.0


def test_canonical_env_var_wins_over_alias_env_var() -> None:
    for env in (
        {"CRONLOOP_CRON_SLEEP": "6", "CRONLOOP_POLL_INTERVAL": "7"},
        {"CRONLOOP_POLL_INTERVAL": "7", "CRONLOOP_CRON_SLEEP": "6"},
    ):
        assert load(env=env).poll_interval == 7.0


# ---------------------------------------------------------------- value syntax


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("0.5", 0.5),
        ("90s", 90.0),
        ("10m", 600.0),
        ("1.5h", 5400.0),
        ("2d", 172800.0),
        (" 10 M ", 600.0),
        ("1e2", 100.0),
    ],
)
def test_durations_with_unit_suffix(text: str, seconds: float) -> None:
    assert load(overrides={"task_timeout": text}).task_timeout == seconds


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "On"])
def test_booleans_true(text: str) -> None:
    assert load(overrides={"auto_migrate": text}).auto_migrate is True


@pytest.mark.parametrize("text", ["0", "false", "No", "OFF"])
def test_booleans_false(text: str) -> None:
    s = load(overrides={"allow_root": text}, env={"CRONLOOP_ALLOW_ROOT": "1"})
    assert s.allow_root is False


def test_log_level_is_case_insensitive() -> None:
    assert load(overrides={"log_level": "WARNING"}).log_level == "warning"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("poll_interval", "0", "greater than 0"),
        ("poll_interval", "3601", "at most 3600"),
        ("poll_interval", "2h", "at most 3600"),
        ("poll_interval", "abc", "expected a duration"),
        ("poll_interval", "nan", "expected a duration"),
        ("poll_interval", "1e999", "out of range"),
        ("max_lifetime", "-1", "at least 0"),
        ("max_lifetime", "10 minutes", "expected a duration"),
        ("task_timeout", "0", "greater than 0"),
        ("lease_s", "1.5", "at least 2"),
        ("watchdog_s", "0", "greater than 0"),
        ("max_concurrency", "0", "at least 1"),
        ("max_concurrency", "1.5", "whole number"),
        ("max_concurrency", "ten", "whole number"),
        ("retry_max", "-2", "at least 0"),
        ("quarantine_strikes", "0", "at least 1"),
        ("verbose", "maybe", "1/0, true/false, yes/no or on/off"),
        ("auto_migrate", "2", "expected a boolean"),
        ("log_level", "loud", "debug, info, warning, error"),
        ("log_format", "xml", "auto, console, plain, json, journal"),
        ("timezone", "Mars/Olympus", "unknown time zone"),
        ("timezone", "../etc/passwd", "unknown time zone"),
        ("task_modules", "good, not-valid", "'not-valid' is not a module name"),
        ("task_modules", "pkg.class", "not a module name"),
        ("database_url", "not a url", "not a database URL"),
    ],
)
def test_bad_values_name_key_value_origin_and_expectation(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    f = params(tmp_path / "a.params", f"# header\n{key} = {value}\n")
    (problem,) = problems_of(f)
    assert problem.startswith(f"file {f}:2: {key} = {value!r}: ")
    assert expected in problem

    (problem,) = problems_of(env={f"CRONLOOP_{key.upper()}": value})
    assert problem.startswith(f"env CRONLOOP_{key.upper()}: {key} = ")
    assert expected in problem

    (problem,) = problems_of(overrides={key: value})
    assert problem.startswith(f"command line: {key} = ")
    assert expected in problem


def test_an_error_under_an_alias_names_the_alias_as_written(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "cron_sleep = soon\n")
    (problem,) = problems_of(f)
    assert problem.startswith(f"file {f}:1: cron_sleep = 'soon': expected a duration")


def test_an_overridden_bad_value_is_not_reported(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "poll_interval = abc\n")
    assert load(f, overrides={"poll_interval": "3"}).poll_interval == 3.0


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    f = params(
        tmp_path / "a.params",
        "poll_interval = abc\n"
        "max_concurrency = 0\n"
        "this line is broken\n"
        "poll_intervall = 3\n"
        "timezone = Nowhere/Land\n",
    )
    problems = problems_of(f, overrides={"lease_s": "1"}, env={"CRONLOOP_LOG_LEVEL": "loud"})
    joined = "\n".join(problems)
    assert len(problems) == 7
    assert f"params file {f}:3: " in joined
    for fragment in (
        f"file {f}:1: poll_interval",
        f"file {f}:2: max_concurrency",
        f"file {f}:4: unknown setting 'poll_intervall'",
        f"file {f}:5: timezone",
        "command line: lease_s",
        "env CRONLOOP_LOG_LEVEL: log_level",
    ):
        assert fragment in joined


def test_unknown_key_suggests_the_closest_known_key(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "x = 1\nmax_concurency = 3\n")
    problems = problems_of(f)
    assert f"file {f}:1: unknown setting 'x'" in problems[0]
    assert "did you mean" not in problems[0]
    assert problems[1].startswith(f"file {f}:2: unknown setting 'max_concurency'")
    assert "did you mean 'max_concurrency'?" in problems[1]

    (problem,) = problems_of(overrides={"cron_slep": "3"})
    assert problem.startswith("command line: unknown setting 'cron_slep'")
    assert "did you mean 'cron_sleep'?" in problem


def test_itop_only_keys_are_explained_without_showing_their_value(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", f"auth_user = admin\nauth_pwd = {PASSWORD}\n")
    problems = problems_of(f)
    assert len(problems) == 2
    assert "'auth_pwd' is an option of iTop's cron.php" in problems[1]
    assert PASSWORD not in "\n".join(problems)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path / "nope.params")
    assert str(tmp_path / "nope.params") in problem
    assert "no such file" in problem


def test_unreadable_params_file_is_reported_with_other_problems(tmp_path: Path) -> None:
    good = params(tmp_path / "a.params", "poll_interval = x\n")
    problems = problems_of(f"{good},{tmp_path}")
    assert len(problems) == 2
    assert any("is a directory" in p and str(tmp_path) in p for p in problems)
