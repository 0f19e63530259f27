"""The settings model (cronloop.config.settings): sources, precedence, validation, secrets."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from cronloop.config import settings as settings_module
from cronloop.config.settings import (
    ALIASES,
    SETTING_KEYS,
    ConfigError,
    Secret,
    Settings,
    describe_sources,
    load_settings,
)
from cronloop.config.values import mask_url

PASSWORD = "Tr0ub4dor&3-unique"  # distinctive, so a leak is easy to find
EXAMPLE = Path(__file__).resolve().parents[3] / "systemd" / "cronloop.params.example"

EXPECTED_DEFAULTS: dict[str, object] = {
    "database_url": "",
    "database_hosts": (),
    "database_password": None,
    "database_password_file": "",
    "max_lifetime": 600.0,
    "lifetime_jitter_s": 5.0,
    "poll_interval": 2.0,
    "max_concurrency": 10,
    "task_timeout": 300.0,
    "grace_s": 5.0,
    "shutdown_grace": 10.0,
    "lease_s": 30.0,
    "max_clock_skew_s": 1.0,
    "timezone": "",
    "verbose": False,
    "log_level": "info",
    "log_format": "auto",
    "task_modules": (),
    "job_retention_days": 7,
    "auto_migrate": False,
    "allow_root": False,
    "startup_db_wait_s": 60.0,
    "retry_max": 3,
    "retry_delay_s": 30.0,
    "quarantine_strikes": 2,
    "quarantine_timeouts": 5,
    "watchdog_s": 30.0,
    "db_pool_size": 20,
    "http_listen": "",
    "http_token": None,
    "http_allow_insecure": False,
}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in tmp_path, and never read the host's /etc/cronloop/cronloop.params."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        settings_module,
        "DEFAULT_PARAM_FILES",
        ("cronloop.params", str(tmp_path / "etc" / "cronloop.params")),
    )


def params(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def load(
    param_file: str | Path | None = None,
    overrides: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """load_settings with an empty environment unless one is given."""
    return load_settings(
        param_file=None if param_file is None else str(param_file),
        overrides=overrides,
        env={} if env is None else env,
    )


def problems_of(
    param_file: str | Path | None = None,
    overrides: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        load(param_file, overrides, env)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


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


# ---------------------------------------------------------------- params file search


def test_default_file_search_order(tmp_path: Path) -> None:
    assert load().param_files == ()
    etc = params(tmp_path / "etc" / "cronloop.params", "poll_interval = 3\n")
    s = load()
    assert (s.param_files, s.poll_interval) == ((str(etc),), 3.0)
    local = params(tmp_path / "cronloop.params", "poll_interval = 4\n")
    s = load()
    assert (s.param_files, s.poll_interval) == ((str(local),), 4.0)
    assert s.sources["poll_interval"] == f"file {local}:1"


def test_param_file_env_var_beats_the_default_locations(tmp_path: Path) -> None:
    params(tmp_path / "cronloop.params", "poll_interval = 4\n")
    other = params(tmp_path / "other.params", "poll_interval = 5\n")
    s = load(env={"CRONLOOP_PARAM_FILE": str(other)})
    assert (s.param_files, s.poll_interval) == ((str(other),), 5.0)
    problems = problems_of(env={"CRONLOOP_PARAM_FILE": str(tmp_path / "missing")})
    assert "missing" in problems[0]


def test_param_file_argument_beats_env_and_empty_means_none(tmp_path: Path) -> None:
    params(tmp_path / "cronloop.params", "poll_interval = 4\n")
    other = params(tmp_path / "other.params", "poll_interval = 5\n")
    third = params(tmp_path / "third.params", "poll_interval = 6\n")
    s = load(third, env={"CRONLOOP_PARAM_FILE": str(other)})
    assert s.poll_interval == 6.0
    s = load("")
    assert (s.param_files, s.poll_interval) == ((), 2.0)


def test_param_file_given_among_the_overrides(tmp_path: Path) -> None:
    other = params(tmp_path / "other.params", "poll_interval = 5\n")
    s = load(overrides={"param_file": str(other), "max_concurrency": "2"})
    assert (s.param_files, s.poll_interval, s.max_concurrency) == ((str(other),), 5.0, 2)


def test_relative_param_file_is_recorded_absolute(tmp_path: Path) -> None:
    params(tmp_path / "rel.params", "poll_interval = 5\n")
    s = load("rel.params")
    assert s.param_files == (os.path.abspath("rel.params"),)
    assert s.sources["poll_interval"] == f"file {tmp_path / 'rel.params'}:1"


# ---------------------------------------------------------------- per-task options


def test_task_options_from_file_env_and_flags(tmp_path: Path) -> None:
    f = params(
        tmp_path / "a.params",
        "backup.time = 23:30\nbackup.week_days = monday\nEmail.Enabled = 0\n",
    )
    env = {
        "CRONLOOP_BACKUP__WEEK_DAYS": "friday",
        "CRONLOOP_EXEC_ASYNC_TASK__RETRY_DELAY": "10",
        "CRONLOOP___BROKEN": "x",
    }
    s = load(f, overrides={"--backup.time": "22:00", "gc.max-items": "5"}, env=env)
    opts = s.task_options
    assert set(opts) == {"backup", "email", "exec_async_task", "gc"}
    assert (opts["backup"]["time"].value, opts["backup"]["time"].origin) == (
        "22:00",
        "command line",
    )
    assert (opts["backup"]["week_days"].value, opts["backup"]["week_days"].origin) == (
        "friday",
        "env CRONLOOP_BACKUP__WEEK_DAYS",
    )
    enabled = opts["email"]["enabled"]
    assert (enabled.key, enabled.value, enabled.origin) == ("email.enabled", "0", f"{f}:3")
    assert opts["exec_async_task"]["retry_delay"].value == "10"
    assert opts["gc"]["max_items"].key == "gc.max_items"


def test_task_options_are_not_validated_here(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "nosuchtask.whatever = ???\n")
    assert load(f).task_options["nosuchtask"]["whatever"].value == "???"


def test_invalid_dotted_flag_is_an_error() -> None:
    (problem,) = problems_of(overrides={"backup.": "1"})
    assert problem.startswith("command line: invalid key 'backup.'")


def test_describe_sources_lists_settings_then_options_masked(tmp_path: Path) -> None:
    f = params(
        tmp_path / "a.params",
        f"database_password = {PASSWORD}\nemail.smtp_password = {PASSWORD}\n"
        "backup.time = 23:30\npoll_interval = 3\n",
    )
    rows = describe_sources(load(f))
    keys = [key for key, _, _ in rows]
    assert keys[: len(SETTING_KEYS)] == sorted(SETTING_KEYS)
    assert keys[len(SETTING_KEYS) :] == ["backup.time", "email.smtp_password"]
    by_key = {key: (value, source) for key, value, source in rows}
    assert by_key["poll_interval"] == ("3", f"file {f}:4")
    assert by_key["backup.time"] == ("23:30", f"file {f}:3")
    assert by_key["email.smtp_password"] == ("********", f"file {f}:2")
    assert by_key["database_password"] == ("********", f"file {f}:1")
    assert by_key["lease_s"] == ("30", "default")
    assert PASSWORD not in repr(rows)


# ---------------------------------------------------------------- verbose and log level


def test_verbose_implies_debug(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "verbose = 1\n")
    s = load(f)
    assert s.log_level == "debug"
    assert s.sources["log_level"] == f"implied by verbose (file {f}:1)"


def test_explicit_log_level_at_a_higher_level_beats_verbose(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "verbose = 1\n")
    assert load(f, overrides={"log_level": "warning"}).log_level == "warning"


def test_verbose_flag_beats_log_level_in_the_file(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "log_level = error\n")
    assert load(f).log_level == "error"
    assert load(f, overrides={"verbose": "1"}).log_level == "debug"


# ---------------------------------------------------------------- passwords


def test_secret_hides_its_value() -> None:
    secret = Secret(PASSWORD)
    assert repr(secret) == "'********'"
    assert str(secret) == "'********'"
    assert f"{secret}" == "'********'"
    assert secret.reveal() == PASSWORD
    assert secret == Secret(PASSWORD)
    assert secret != Secret("other")
    assert hash(secret) == hash(Secret(PASSWORD))


@pytest.fixture
def all_password_sources(tmp_path: Path) -> dict[str, object]:
    """Every source of the password at once, each with a different value."""
    pw_file = params(tmp_path / "pw", "from-password-file\n")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "database_password").write_text("from-credentials\n")
    f = params(
        tmp_path / "a.params",
        f"database_password = from-params\ndatabase_password_file = {pw_file}\n",
    )
    env = {"CRONLOOP_DATABASE_PASSWORD": "from-env", "CREDENTIALS_DIRECTORY": str(creds)}
    return {"file": f, "env": env, "creds": creds, "pw_file": pw_file}


def test_password_precedence(all_password_sources: dict[str, object]) -> None:
    f = all_password_sources["file"]
    assert isinstance(f, Path)
    env = dict(all_password_sources["env"])  # type: ignore[call-overload]
    creds = all_password_sources["creds"]
    assert isinstance(creds, Path)
    pw_file = all_password_sources["pw_file"]

    def check(overrides: dict[str, str], expected: str, source: str) -> None:
        s = load(f, overrides, env)
        assert s.database_password is not None
        assert s.database_password.reveal() == expected
        assert s.sources["database_password"] == source

    check({"database_password": "from-flag"}, "from-flag", "command line")
    check({}, "from-env", "env CRONLOOP_DATABASE_PASSWORD")
    del env["CRONLOOP_DATABASE_PASSWORD"]
    check({}, "from-credentials", "credentials directory")
    (creds / "database_password").unlink()  # credentials directory without the password
    check({}, "from-password-file", f"database_password_file {pw_file}")
    del env["CREDENTIALS_DIRECTORY"]
    check({"database_password_file": ""}, "from-params", f"file {f}:1")


def test_password_from_env_keeps_spaces() -> None:
    s = load(env={"CRONLOOP_DATABASE_PASSWORD": " a b "})
    assert s.database_password == Secret(" a b ")


def test_empty_password_means_none(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "database_password = secret\n")
    s = load(f, overrides={"database_password": ""})
    assert s.database_password is None
    assert s.sources["database_password"] == "command line"


def test_password_file_strips_one_trailing_newline_only(tmp_path: Path) -> None:
    pw = params(tmp_path / "pw", " pass word \n\n")
    s = load(overrides={"database_password_file": str(pw)})
    assert s.database_password == Secret(" pass word \n")
    params(pw, "pw\r\n")
    assert load(overrides={"database_password_file": str(pw)}).database_password == Secret("pw")


@pytest.mark.parametrize(
    ("content", "mode", "expected"),
    [(None, 0o600, "no such file"), ("", 0o600, "empty"), ("x\n", 0o644, "chmod 600")],
)
def test_bad_password_file_is_an_error_naming_key_and_path(
    tmp_path: Path, content: str | None, mode: int, expected: str
) -> None:
    pw = tmp_path / "pw"
    if content is not None:
        params(pw, content, mode)
    (problem,) = problems_of(env={"CRONLOOP_DATABASE_PASSWORD_FILE": str(pw)})
    assert problem.startswith("env CRONLOOP_DATABASE_PASSWORD_FILE: database_password_file")
    assert str(pw) in problem
    assert expected in problem


def test_password_file_is_checked_even_when_a_higher_source_wins(tmp_path: Path) -> None:
    (problem,) = problems_of(
        overrides={"database_password": "x", "database_password_file": str(tmp_path / "no")}
    )
    assert "no such file" in problem


def test_credentials_directory_without_password_file_is_fine(tmp_path: Path) -> None:
    s = load(env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert s.database_password is None


def test_unreadable_credential_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "database_password").mkdir()
    (problem,) = problems_of(env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert problem.startswith("credentials directory: ")
    assert "is a directory" in problem


def test_password_never_leaks(tmp_path: Path) -> None:
    url = f"mysql+aiomysql://cronloop:{PASSWORD}@db.example/itop"
    f = params(tmp_path / "a.params", f"database_password = {PASSWORD}\ndatabase_url = {url}\n")
    s = load(f)
    assert s.database_password == Secret(PASSWORD)
    for text in (repr(s), str(s), repr(s.masked()), repr(describe_sources(s))):
        assert PASSWORD not in text
    assert s.masked()["database_password"] == "********"
    assert s.masked()["database_url"] == "mysql+aiomysql://cronloop:********@db.example/itop"
    assert s.database_url == url  # the real URL is still there for the connector

    # errors elsewhere in the same configuration do not reveal it either
    bad = params(tmp_path / "b.params", f"database_password = {PASSWORD}\npoll_interval = x\n")
    problems = problems_of(bad, env={"CRONLOOP_DATABASE_PASSWORD": PASSWORD})
    assert PASSWORD not in "\n".join(problems)


def test_bad_database_url_error_masks_its_password() -> None:
    url = f"mysql://u:{PASSWORD}@host:notaport/db"
    (problem,) = problems_of(overrides={"database_url": url})
    assert "not a database URL" in problem
    assert PASSWORD not in problem
    assert "mysql://u:********@host:notaport/db" in problem


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("mysql+aiomysql://u:s3cret@h/db", "mysql+aiomysql://u:********@h/db"),
        ("mysql+aiomysql://u:p%40ss@h:3306/db", "mysql+aiomysql://u:********@h:3306/db"),
        ("mysql+aiomysql://cronloop@db.example/itop", "mysql+aiomysql://cronloop@db.example/itop"),
        ("sqlite+aiosqlite:////var/lib/x.db", "sqlite+aiosqlite:////var/lib/x.db"),
        ("mysql://u:s3cret@h:bad/db", "mysql://u:********@h:bad/db"),
        (
            "mysql://u@h/db?password=s3cret&charset=utf8",
            "mysql://u@h/db?password=********&charset=utf8",
        ),
        (
            "mysql://u@h/db?charset=utf8&PASSWD=s3cret",
            "mysql://u@h/db?charset=utf8&PASSWD=********",
        ),
        ("smtp://h?api_token=s3cret", "smtp://h?api_token=********"),
        ("mysql://u@h/db?password=", "mysql://u@h/db?password="),
        ("mysql://u@h/db?charset=utf8", "mysql://u@h/db?charset=utf8"),
        ("23:30", "23:30"),
        ("", ""),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_masked_formats_every_setting() -> None:
    s = Settings(task_modules=("a", "b.c"), verbose=True, lifetime_jitter_s=1.5)
    shown = s.masked()
    assert set(shown) == set(SETTING_KEYS)
    assert (shown["task_modules"], shown["verbose"], shown["lifetime_jitter_s"]) == (
        "a,b.c",
        "true",
        "1.5",
    )
    assert (shown["max_lifetime"], shown["database_password"]) == ("600", "")


# ---------------------------------------------------------------- file permissions


@pytest.mark.parametrize(
    ("text", "mode", "refused"),
    [
        (f"database_password = {PASSWORD}\n", 0o644, True),
        (f"database_password = {PASSWORD}\n", 0o604, True),
        (f"database_password = {PASSWORD}\n", 0o660, True),
        (f"database_password = {PASSWORD}\n", 0o600, False),
        (f"database_password = {PASSWORD}\n", 0o640, False),
        (f"database_url = mysql://u:{PASSWORD}@h/db\n", 0o644, True),
        ("database_url = mysql://u@h/db\n", 0o644, False),
        (f"database_url = mysql://u@h/db?password={PASSWORD}\n", 0o644, True),
        (f"DATABASE_URL = mysql://u@h/db?passwd={PASSWORD}\n", 0o644, True),
        (f"email.relay = smtp://u:{PASSWORD}@h\n", 0o644, True),
        (f"Email.Smtp_Password = {PASSWORD}\n", 0o644, True),
        (f"email.smtp_password = {PASSWORD}\n", 0o644, True),
        ("database_password =\n", 0o644, False),
        ("poll_interval = 3\n", 0o664, False),
        ("poll_interval = 3\n", 0o646, True),
    ],
)
def test_params_file_permissions(tmp_path: Path, text: str, mode: int, refused: bool) -> None:
    f = params(tmp_path / "a.params", text, mode)
    if not refused:
        load(f)
        return
    (problem,) = problems_of(f)
    assert problem.startswith(f"params file {f}: ")
    assert "chmod" in problem
    assert f"{mode:04o}" in problem
    assert PASSWORD not in problem


def test_a_url_password_is_masked_in_every_view(tmp_path: Path) -> None:
    url = f"mysql+aiomysql://u@h/db?password={PASSWORD}"
    f = params(
        tmp_path / "a.params", f"database_url = {url}\nemail.relay = smtp://u:{PASSWORD}@h\n"
    )
    s = load(f)
    assert s.database_url == url
    rows = {key: value for key, value, _ in describe_sources(s)}
    assert rows["database_url"].endswith("?password=********")
    assert rows["email.relay"] == "smtp://u:********@h"
    assert PASSWORD not in repr(s) and PASSWORD not in str(s.masked())
    (problem,) = problems_of(overrides={"database_url": f"mysql://h:bad:port/db?pwd={PASSWORD}"})
    assert PASSWORD not in problem


def test_refused_file_names_the_secret_key_and_line(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", f"x.y = 1\ndatabase_password = {PASSWORD}\n", 0o644)
    (problem,) = problems_of(f)
    assert "holds a secret (database_password, line 2)" in problem
    assert f"chmod 600 {f}" in problem
    assert f"chmod 640 {f}" in problem


# ---------------------------------------------------------------- the example file


def example_defaults() -> dict[str, str]:
    """The ``# key = value`` lines of the example (its documented defaults)."""
    found = {}
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"# ([a-z_]+) =(?: (.*))?", line)
        if match:
            found[match.group(1)] = match.group(2) or ""
    return found


def test_example_documents_every_setting_with_its_default(tmp_path: Path) -> None:
    documented = example_defaults()
    assert set(documented) == set(SETTING_KEYS)
    text = "".join(f"{key} = {value}\n" for key, value in documented.items())
    s = load(params(tmp_path / "uncommented.params", text))
    assert s == dataclasses.replace(Settings(), param_files=s.param_files)


def test_example_has_a_comment_above_every_setting() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if re.fullmatch(r"# [a-z_]+ =.*", line):
            above = lines[number - 1]
            assert above.startswith("# ") and len(above) > 2, f"no comment above {line!r}"


def test_example_loads_as_is_to_the_defaults(tmp_path: Path) -> None:
    s = load(params(tmp_path / "copy.params", EXAMPLE.read_text(encoding="utf-8")))
    assert s == dataclasses.replace(Settings(), param_files=s.param_files)


@pytest.mark.parametrize(
    ("old", "new"),
    [("backup_dir", "backup.backup_dir"), ("history_retention_days", "history_gc.retention_days")],
)
def test_a_setting_that_became_a_task_option_is_refused_naming_the_new_key(
    tmp_path: Path, old: str, new: str
) -> None:
    f = params(tmp_path / "a.params", f"{old} = 7\n")
    (problem,) = problems_of(f)
    assert problem.startswith(f"file {f}:1: '{old}' is no longer a cronloop setting")
    assert f"`{new} = ...`" in problem
    (problem,) = problems_of(env={f"CRONLOOP_{old.upper()}": "7"})
    assert problem.startswith(f"env CRONLOOP_{old.upper()}: '{old}'") and new in problem
    (problem,) = problems_of(overrides={old: "7"})
    assert problem.startswith("command line:") and new in problem


def test_the_new_task_option_keys_are_accepted(tmp_path: Path) -> None:
    f = params(tmp_path / "a.params", "backup.backup_dir = /b\nhistory_gc.retention_days = 0\n")
    s = load(f)
    assert s.task_options["backup"]["backup_dir"].value == "/b"
    assert s.task_options["history_gc"]["retention_days"].value == "0"
