"""The settings model: where the params file is found, per-task options, verbose and the
log level, and the example file shipped in systemd/."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from cronloop.config.settings import (
    SETTING_KEYS,
    Settings,
    describe_sources,
)
from tests.unit.config.settings_support import (
    EXAMPLE,
    PASSWORD,
    isolated,  # noqa: F401  (a fixture)
    load,
    params,
    problems_of,
)

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
