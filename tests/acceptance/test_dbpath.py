"""Where the embedded database is, seen from the real CLI: every command but `run` and
`migrate` refuses a missing SQLite file; an admin anywhere on a deployed host finds the
service's database; what cronloop creates is private.

A deployed host is played under ``$CRONLOOP_TEST_SYSTEM_ROOT`` (its ``etc/cronloop`` and
``var/lib/cronloop``); the real deployment is tests/systemd/test_deployment.py.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import Cli

NOT_CREATING = [
    ["status"],
    ["status", "--json"],
    ["history"],
    ["pause", "quick"],
    ["resume", "quick"],
    ["trigger", "quick"],
    ["demo"],
    ["backup"],
    ["queue-email", "--to", "a@example.com", "--subject", "s", "--body", "b"],
]


def host(root: Path, **extra: str | None) -> dict[str, str | None]:
    """The environment of an admin shell on the host under `root`: no STATE_DIRECTORY."""
    return {"STATE_DIRECTORY": None, "CRONLOOP_TEST_SYSTEM_ROOT": str(root), **extra}


def elsewhere(cli: Cli, name: str) -> Cli:
    """The same CLI, standing in another (empty) directory."""
    other = cli.cwd / name
    other.mkdir()
    return type(cli)(cli.backend, other, cli.env, cli.db_args, cli.inspect_url)


def test_commands_refuse_a_missing_database_outside_any_deployment(sqlite_cli: Cli) -> None:
    env = host(sqlite_cli.cwd / "no-such-root")
    looked_for = sqlite_cli.cwd / "var" / "cronloop.db"
    for command in NOT_CREATING:
        result = sqlite_cli.run(*command, env=env, tasks="quick")
        assert result.rc == 1, f"{command}: {result}"
        assert f"no database at {looked_for}" in result.err, result.err
        assert "only `cronloop run` and `cronloop migrate` create one" in result.err
        assert "Traceback" not in result.err
    assert not (sqlite_cli.cwd / "var").exists(), "a refused command created ./var"
    # the two that may create it do
    sqlite_cli.ok("migrate", env=env)
    assert looked_for.is_file()


def test_an_admin_anywhere_finds_the_service_database(sqlite_cli: Cli) -> None:
    root = sqlite_cli.cwd / "host"
    state = root / "var/lib/cronloop"
    # the service: systemd's STATE_DIRECTORY, the system params file
    params = root / "etc/cronloop/cronloop.params"
    params.parent.mkdir(parents=True)
    params.write_text("poll_interval = 1\n")
    service = host(root, STATE_DIRECTORY=str(state), CRONLOOP_PARAM_FILE=str(params))
    sqlite_cli.ok("run", "--once", env=service, tasks="quick")

    admin = elsewhere(sqlite_cli, "admin")
    out = admin.ok("status", env=host(root), tasks="quick").out
    assert out.splitlines()[0] == f"database: {state / 'cronloop.db'}"
    quick = next(line for line in out.splitlines() if line.startswith("quick"))
    assert [c.strip() for c in quick.split("|")][4] == "1"
    assert "quick: active -> paused" in admin.ok("pause", "quick", env=host(root)).out
    shown = admin.ok("check-config", env=host(root)).out
    assert f"# database: {state / 'cronloop.db'}" in shown
    assert not (admin.cwd / "var").exists()

    # a STATE_DIRECTORY that is not the service's: refused, naming the service's database
    wrong = host(root, STATE_DIRECTORY=str(admin.cwd / "wrong"))
    result = admin.run("status", env=wrong)
    assert result.rc == 1
    assert f"no database at {admin.cwd / 'wrong' / 'cronloop.db'}" in result.err
    assert f"the service's database is {state / 'cronloop.db'}" in result.err


def test_the_system_params_file_in_force_means_the_system_directory(sqlite_cli: Cli) -> None:
    root = sqlite_cli.cwd / "host"
    params = root / "etc/cronloop/cronloop.params"
    params.parent.mkdir(parents=True)
    params.write_text("poll_interval = 1\n")
    # before the first start: /var/lib/cronloop does not exist yet, the params file does
    result = sqlite_cli.run("status", env=host(root, CRONLOOP_PARAM_FILE=str(params)))
    assert result.rc == 1
    assert f"no database at {root / 'var/lib/cronloop/cronloop.db'}" in result.err


def test_unknown_task_names_fail_on_an_empty_database(sqlite_cli: Cli) -> None:
    sqlite_cli.ok("migrate")  # a database with the schema and no task at all
    for verb in ("pause", "resume", "trigger"):
        result = sqlite_cli.run(verb, "quick")
        assert result.rc == 1, str(result)
        assert "no task named 'quick'" in result.err


@pytest.fixture
def shell_umask() -> Iterator[None]:
    """umask 022, an admin shell's: the workers started inherit it."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("shell_umask")
def test_files_cronloop_creates_are_private(sqlite_cli: Cli) -> None:
    state = sqlite_cli.cwd / "state"  # base env's STATE_DIRECTORY, absent so far
    worker = sqlite_cli.start("--poll_interval=0.2", tasks="ticker")
    worker.wait_for("run finished", task="ticker", count=2)
    files = {p.name: mode(p) for p in state.iterdir()}  # while it runs: -wal and -shm exist
    worker.signal()
    assert worker.wait(10) == 0
    assert mode(state) == 0o700
    assert files == {
        "cronloop.db": 0o600,
        "cronloop.db-wal": 0o600,
        "cronloop.db-shm": 0o600,
        "cronloop.db.migrate.lock": 0o600,
    }
