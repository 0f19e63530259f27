"""Bad input at the CLI's edges (issue 10): task names the database cannot hold, root and
foreign params files, escape sequences in what the database shows an operator.

Each runs the real `cronloop` in a subprocess, on SQLite and on MariaDB where a database
is opened.
"""

from __future__ import annotations

import json
import os
import pwd
from typing import TYPE_CHECKING

import pytest

from tests.support.cli import Result, run_cronloop

if TYPE_CHECKING:
    from conftest import Cli

NAMES = {
    "too-long": "from cronloop import task\n@task(every=60, name='t' * 300)\n"
    "async def job(ctx): pass\n",
    "case-duplicate": "from cronloop import task\n"
    "@task(every=60, name='Report')\nasync def a(ctx): pass\n"
    "@task(every=60, name='report')\nasync def b(ctx): pass\n",
    "unicode": "from cronloop import task\n@task(every=60, name='rapport_été')\n"
    "async def job(ctx): pass\n",
}


@pytest.mark.parametrize("case", list(NAMES))
def test_a_bad_task_name_is_a_definition_error_exit_78(cli: Cli, case: str) -> None:
    """These used to crash the start on MariaDB with exit 70 (a restart loop under
    systemd): the name did not fit the column, or the unique index folds case."""
    cli.write_module("bad_names", NAMES[case])
    for command in (["run", "--once"], ["tasks"], ["check-config"]):
        result = cli.run(*command, "--task_modules=bad_names")
        assert result.rc == 78, str(result)
        assert "task definition error" in result.err and "Traceback" not in result.err
        assert "bad_names" in result.err
    assert cli.run("migrate").rc == 0  # (only run and migrate create a database)
    status = cli.run("status", "--json")
    assert status.rc == 0 and json.loads(status.out) == []  # nothing reached the task table


as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (as CI runs)")


@as_root
@pytest.mark.parametrize("command", [["tasks"], ["check-config"], ["history"], ["trigger", "x"]])
def test_every_command_refuses_root_without_allow_root(sqlite_cli: Cli, command: list[str]) -> None:
    """`tasks` and `check-config` import task code; they ran as root before."""
    sqlite_cli.write_module("root_probe", "open('imported-as-root', 'w').close()\n")
    no_allow = {"CRONLOOP_ALLOW_ROOT": None}
    result = sqlite_cli.run(*command, "--task_modules=root_probe", env=no_allow)
    assert result.rc == 78, str(result)
    assert "refusing to run as root" in result.err and "--allow-root" in result.err
    assert not (sqlite_cli.cwd / "imported-as-root").exists()
    allowed = sqlite_cli.run(*command, "--allow-root", "--task_modules=root_probe", env=no_allow)
    assert allowed.rc in (0, 1), str(allowed)  # 1: `trigger` names no task


@as_root
def test_a_params_file_in_the_working_directory_owned_by_another_user_is_refused(
    sqlite_cli: Cli,
) -> None:
    """A world-writable directory was enough to make root import someone else's module."""
    sqlite_cli.write_module("their_module", "open('their-code-ran', 'w').close()\n")
    path = sqlite_cli.write_params("task_modules = their_module\n", mode=0o644)
    os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
    env = sqlite_cli._env(None, {"CRONLOOP_PARAM_FILE": None})  # the file found implicitly

    def cronloop(*args: str) -> Result:  # no --task_modules: the file's must be the one
        return run_cronloop(args, env, sqlite_cli.cwd)

    for command in (["check-config"], ["run", "--once"]):
        result = cronloop(*command)
        assert result.rc == 78, str(result)
        assert str(path) in result.err and "owned by nobody" in result.err
    assert not (sqlite_cli.cwd / "their-code-ran").exists()
    os.chown(path, os.geteuid(), -1)
    path.chmod(0o664)
    result = cronloop("check-config")
    assert result.rc == 78 and "writable by its group or others" in result.err, str(result)
    path.chmod(0o644)
    result = cronloop("check-config")
    assert result.rc == 0 and f"params files read: {path}" in result.out, str(result)
    assert (sqlite_cli.cwd / "their-code-ran").exists()  # the user's own file: it is used


ESCAPES = "\x1b[2J\x1b]0;owned\x07\u202edone\r"
ESCAPING_TASK = f"""from cronloop import task
@task(every=3600)
async def shouty(ctx):
    return {ESCAPES!r}
"""


def test_escape_sequences_from_the_database_are_shown_escaped(cli: Cli) -> None:
    """A task message with terminal escape sequences reached the operator's terminal
    unchanged through `history` (and console log lines); now shown, not obeyed."""
    cli.write_module("shouty_tasks", ESCAPING_TASK)
    args = ("--task_modules=shouty_tasks", "--log_format=console")
    ran = cli.ok("run", "--once", *args)
    shown = cli.ok("history", *args).out
    for out in (shown, ran.err):
        assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, out
    assert "\\x1b[2J\\x1b]0;owned\\x07\\u202edone" in shown
    assert "\\x1b[2J" in ran.err
    raw = cli.ok("history", "--json", *args).out  # programs get the exact text
    assert json.loads(raw)[0]["message"] == ESCAPES
