"""The `cronloop` commands an operator types: configuration errors, check-config, status,
history, tasks, and pause / resume / trigger against a running worker.

Configuration errors never reach a database, so those tests run once (SQLite state dir);
everything that reads or writes the task table runs on SQLite and on MariaDB.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Cli

POLL = "--poll_interval=0.2"
SECRET = "Sup3r-s3cret-PW"
URL_SECRET = "Url-s3cret-PW"
STATUS_COLUMNS = [
    "Task",
    "Status",
    "Last Run",
    "Next Run",
    "Nb Run",
    "Avg. Dur.",
    "Last Outcome",
    "Running",
]


def config_error(cli: Cli, *args: str) -> str:
    """Run a command that must fail with exit 78; its stderr."""
    result = cli.run(*args)
    assert result.rc == 78, str(result)
    assert result.err.startswith("cronloop: configuration error"), result.err
    assert "Traceback" not in result.err
    return result.err


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("poll_interval = 1\npolll_interval = 2\n", 2, ["'polll_interval'", "'poll_interval'"]),
        ("# sizes\nmax_concurrency = many\n", 2, ["max_concurrency", "'many'"]),
        ("nosuchtask.enabled = 0\n", 1, ["nosuchtask"]),
        ("quick.colour = red\n", 1, ["quick.colour"]),
        ("quick.timeout = soon\n", 1, ["quick.timeout"]),
        ("poll_interval 5\n", 1, []),
    ],
    ids=["unknown-key", "bad-value", "unknown-task", "unknown-option", "bad-option", "no-equals"],
)
def test_params_file_errors_name_the_key_and_file_line(
    sqlite_cli: Cli, text: str, line: int, words: list[str]
) -> None:
    params = sqlite_cli.write_params(text)
    for command in ("run", "check-config"):
        err = config_error(
            sqlite_cli, command, "--once" if command == "run" else "-v", "--param-file", str(params)
        )
        assert f"{params}:{line}" in err
        for word in words:
            assert word in err


def test_missing_explicit_params_file_is_a_config_error(sqlite_cli: Cli) -> None:
    missing = sqlite_cli.cwd / "nowhere" / "cronloop.params"
    err = config_error(sqlite_cli, "run", "--once", f"--param_file={missing}")
    assert str(missing) in err


def test_world_readable_params_file_with_a_password_is_refused(sqlite_cli: Cli) -> None:
    params = sqlite_cli.write_params(
        f"poll_interval = 1\ndatabase_password = {SECRET}\n", mode=0o644
    )
    err = config_error(sqlite_cli, "check-config", "--param-file", str(params))
    assert str(params) in err and "0644" in err and "chmod" in err
    assert SECRET not in err


def test_itop_param_file_flag_and_check_config_sources(sqlite_cli: Cli) -> None:
    params = sqlite_cli.write_params("cron_sleep = 7\nquick.timeout = 3\n")
    for form in ([f"--param_file={params}"], ["--param-file", str(params)]):
        out = sqlite_cli.ok("check-config", *form, "--max_concurrency=4").out
        settings = {
            line.split("=")[0].strip(): line
            for line in out.splitlines()
            if not line.startswith("#")
        }
        assert settings["poll_interval"].split("#")[1].strip() == f"file {params}:1 (as cron_sleep)"
        assert "= 7 " in settings["poll_interval"]
        assert settings["max_concurrency"].endswith("# command line")
        assert settings["quick.timeout"].endswith(f"# file {params}:2")
        assert settings["allow_root"].endswith("# env CRONLOOP_ALLOW_ROOT")
        assert f"# params files read: {params}" in out
        assert "quick" in out.splitlines()[-1]


def test_passwords_never_appear_in_any_output(sqlite_cli: Cli) -> None:
    url = f"mysql://app:{URL_SECRET}@127.0.0.1:1/itop"
    params = sqlite_cli.write_params(f"database_url = {url}\ndatabase_password = {SECRET}\n")
    shown = sqlite_cli.ok("check-config", f"--param_file={params}", "-v")
    rows = {line.split("=")[0].strip(): line for line in shown.out.splitlines()}
    assert "********" in rows["database_password"]
    assert f"file {params}:2" in rows["database_password"]
    assert "app:********@127.0.0.1:1/itop" in rows["database_url"]
    # an unreachable database: the error is logged and reported without the password
    failed = sqlite_cli.run(
        "run", "--once", f"--param_file={params}", "--startup_db_wait_s=0", "-v"
    )
    assert failed.rc == 75, str(failed)
    assert "unreachable" in failed.err
    in_env = sqlite_cli.run(
        "run",
        "--once",
        f"--param_file={params}",
        "--startup_db_wait_s=0",
        env={"CRONLOOP_DATABASE_PASSWORD": SECRET},
    )
    assert in_env.rc == 75, str(in_env)
    bad = sqlite_cli.write_params(f"database_url = mysql://app:{URL_SECRET}@h:x/db\n", "bad.params")
    bad_value = sqlite_cli.run("check-config", f"--param_file={bad}")
    assert bad_value.rc == 78 and f"{bad}:1" in bad_value.err, str(bad_value)
    # on the command line (readable by anyone with ps) a password is refused, not echoed
    in_argv = [
        sqlite_cli.run("check-config", f"--database_url={url}"),
        sqlite_cli.run("check-config", f"--database_password={SECRET}"),
    ]
    for result in in_argv:
        assert result.rc == 78 and "do not put a password on the command line" in result.err
    for result in (shown, failed, in_env, bad_value, *in_argv):
        assert SECRET not in result.out + result.err
        assert URL_SECRET not in result.out + result.err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
def test_refuses_to_run_as_root_without_allow_root(sqlite_cli: Cli) -> None:
    no_allow = {"CRONLOOP_ALLOW_ROOT": None}
    for command in (["run", "--once"], ["status"], ["migrate"]):
        result = sqlite_cli.run(*command, env=no_allow)
        assert result.rc == 78, str(result)
        assert "refusing to run as root" in result.err and "--allow-root" in result.err
    assert sqlite_cli.run("run", "--once", "--allow-root", tasks="quick", env=no_allow).rc == 0


def test_tasks_lists_the_sample_tasks_with_schedules(sqlite_cli: Cli) -> None:
    out = sqlite_cli.ok("tasks").out
    rows = {
        line.split("|")[0].strip(): [c.strip() for c in line.split("|")]
        for line in out.splitlines()[2:]
    }
    assert rows["quick"][1] == "every 3600s"
    assert rows["ticker"][1] == "every 0.5s"
    assert rows["nightly"][1].startswith("weekly 03:00")
    assert rows["slowpoke"][2] == "1 s"
    assert rows["threaded"][3] == "blocking"
    assert out.splitlines()[0].split("|")[0].strip() == "Task"


def test_status_table_and_history(cli: Cli) -> None:
    cli.ok("run", "--once", tasks="quick,boom")
    header, *lines = cli.ok("status").out.splitlines()
    if cli.backend == "sqlite":
        assert header == f"database: {cli.cwd / 'state' / 'cronloop.db'}"
    else:
        assert header.startswith("database: mysql") and "127.0.0.1" in header
    assert [c.strip() for c in lines[0].split("|")] == STATUS_COLUMNS
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")] for line in lines[2:]}
    assert rows["quick"][1] == "active" and rows["quick"][4] == "1"
    assert rows["quick"][6] == "success" and rows["quick"][7] == "no"
    assert rows["boom"][6].startswith("failed")

    history = cli.ok("history", "quick").out.splitlines()
    assert history[0].split("|")[0].strip() == "Task"
    assert len(history) == 3 and "success" in history[2] and "quick done" in history[2]
    entries = json.loads(cli.ok("history", "boom", "--json").out)
    assert [(e["task_name"], e["outcome"]) for e in entries] == [("boom", "failed")]
    assert "kaboom" in entries[0]["error"]
    everything = json.loads(cli.ok("history", "--json").out)
    assert {e["task_name"] for e in everything} == {"quick", "boom"}


def test_unknown_task_names_exit_1(cli: Cli) -> None:
    cli.ok("run", "--once", tasks="quick")
    for verb in ("pause", "resume", "trigger", "history"):
        result = cli.run(verb, "nosuch")
        assert result.rc == 1, str(result)
        assert "no task named 'nosuch'" in result.err
        assert "Traceback" not in result.err


def _idle(seconds: float) -> None:
    """Let the worker run for a while, to see that something does NOT happen: nothing to
    wait for but the clock."""
    time.sleep(seconds)


def _count(worker_events: list[dict[str, object]], task: str) -> int:
    return sum(
        1 for e in worker_events if e.get("event") == "run finished" and e.get("task") == task
    )


def test_pause_resume_trigger_while_a_worker_runs(cli: Cli) -> None:
    worker = cli.start(POLL, tasks="ticker,hourly")
    worker.wait_for("run finished", task="hourly")
    worker.wait_for("run finished", task="ticker", count=2)

    assert "ticker: active -> paused" in cli.ok("pause", "ticker").out
    _idle(0.3)  # a run claimed just before the pause may still finish
    settled = _count(worker.events, "ticker")
    _idle(1.5)  # three periods of the ticker
    assert _count(worker.events, "ticker") == settled, "a paused task kept running"
    assert cli.status()["ticker"]["status"] == "paused"

    assert "ticker: paused -> active" in cli.ok("resume", "ticker").out
    worker.wait_for("run finished", task="ticker", count=settled + 2, timeout=3)

    mark = worker.mark()
    assert cli.ok("trigger", "hourly").rc == 0
    triggered = time.monotonic()
    worker.wait_for("run finished", task="hourly", since=mark, timeout=3)
    assert time.monotonic() - triggered < 1.5, "a trigger runs within ~poll_interval"
    status = cli.status()["hourly"]
    assert status["runs"] == 2
    rows = cli.history_rows("hourly")
    assert [r["triggered"] for r in rows] == [False, True]

    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0


@pytest.mark.mariadb
def test_stale_mysql_schema_is_refused_until_migrated(
    empty_mariadb_url: str, cli_on: Callable[[str], Cli]
) -> None:
    cli = cli_on(empty_mariadb_url)
    for command in (["run", "--once"], ["status"]):
        result = cli.run(*command, tasks="quick")
        assert result.rc == 78, str(result)
        assert "cronloop migrate" in result.err and "auto_migrate" in result.err
    result = cli.ok("run", "--once", "--auto_migrate=1", tasks="quick")
    assert [e["outcome"] for e in result.events if e.get("event") == "run finished"] == ["success"]
    assert "schema already current" in cli.ok("migrate").out
    assert cli.status()["quick"]["runs"] == 1
