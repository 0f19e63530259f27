"""Bad input at the CLI's edges (issue 10): task names the database cannot hold, root and
foreign params files, escape sequences in what the database shows an operator.

Each runs the real `cronloop` in a subprocess, on SQLite and on MariaDB where a database
is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

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
    assert cli.run("status").rc == 0  # nothing reached the task table
