"""The standard plugin's commands on the real command line, and what the plugin seam
refuses: `cronloop restore` on real MariaDB (describe, refuse without --yes, restore with
it), a database stamped with a revision no plugin knows, and a setting that became a task
option.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa
from conftest import make_cli
from sqlalchemy.pool import NullPool

from cronloop.store.sql.tables import VERSION_TABLE
from tests.support.mariadb import scratch_database

if TYPE_CHECKING:
    from conftest import Cli


@pytest.fixture
def mariadb_cli(tmp_path: Path, foreign_tasks_off: dict[str, str]) -> Iterator[Cli]:
    """The CLI on a fresh scratch MariaDB database of its own, migrated."""
    with scratch_database("cronloop_acc_plugin") as db:
        handle = make_cli("mariadb", tmp_path, foreign_tasks_off, db.url)
        try:
            handle.ok("migrate")
            yield handle
        finally:
            handle.close()


def execute(cli: Cli, *statements: str) -> list[object]:
    """Run SQL on the test's database; the first column of the last statement's rows."""
    engine = sa.create_engine(cli.inspect_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            result = None
            for statement in statements:
                result = conn.execute(sa.text(statement))
            return list(result.scalars()) if result is not None and result.returns_rows else []
    finally:
        engine.dispose()


def test_the_standard_plugin_adds_its_commands(sqlite_cli: Cli) -> None:
    result = sqlite_cli.ok("--help")
    for command in ("backup", "restore", "demo", "queue-email"):
        assert f"    {command} " in result.out or f"    {command}\n" in result.out, result.out
    assert "ARCHIVE" in sqlite_cli.ok("restore", "--help").out.upper()


@pytest.mark.mariadb
def test_restore_describes_refuses_without_yes_then_restores(mariadb_cli: Cli) -> None:
    cli = mariadb_cli
    execute(cli, "CREATE TABLE marker (v VARCHAR(20))", "INSERT INTO marker VALUES ('before')")
    backups = cli.cwd / "backups"
    archive = Path(cli.ok("backup", f"--backup.backup_dir={backups}").out.strip())
    assert archive.parent == backups and archive.exists()
    execute(cli, "UPDATE marker SET v = 'after'")

    refused = cli.run("restore", str(archive))
    assert refused.rc == 1, str(refused)
    assert f"archive {archive}: verified" in refused.out
    assert "will OVERWRITE the MariaDB/MySQL database" in refused.out
    assert "nothing restored: run again with --yes" in refused.out
    assert execute(cli, "SELECT v FROM marker") == ["after"]

    done = cli.ok("restore", str(archive), "--yes")
    assert f"restored {archive}" in done.out
    assert execute(cli, "SELECT v FROM marker") == ["before"]


@pytest.mark.mariadb
def test_restore_of_a_damaged_archive_is_refused_with_exit_65(mariadb_cli: Cli) -> None:
    bad = mariadb_cli.cwd / "bad.tar.gz"
    bad.write_bytes(b"not an archive at all")
    result = mariadb_cli.run("restore", str(bad), "--yes")
    assert result.rc == 65, str(result)
    assert result.err.startswith("cronloop: restore failed:") and str(bad) in result.err
    assert "Traceback" not in result.err


@pytest.mark.mariadb
def test_a_revision_no_plugin_knows_is_a_config_error_naming_it(mariadb_cli: Cli) -> None:
    execute(mariadb_cli, f"INSERT INTO {VERSION_TABLE} (version_num) VALUES ('f00dfeed1234')")
    for command in ("status", "migrate"):
        result = mariadb_cli.run(command)
        assert result.rc == 78, str(result)
        assert "f00dfeed1234" in result.err and "plugin" in result.err, result.err
        assert "Traceback" not in result.err


def test_a_moved_setting_is_refused_naming_its_new_key(sqlite_cli: Cli) -> None:
    params = sqlite_cli.write_params("backup_dir = /srv/backups\n")
    result = sqlite_cli.run("check-config", "--param-file", str(params))
    assert result.rc == 78, str(result)
    assert f"{params}:1" in result.err and "backup.backup_dir" in result.err


ACME_PLUGIN = """
from cronloop import Command, CommandError, Plugin


def hello(ctx):
    if ctx.args.who == "nobody":
        raise CommandError("nobody to greet", 3)
    options = ctx.task_options("acme_sweep")
    ctx.print(f"hello {ctx.args.who}, batch {options['batch']}")
    return 0


async def count(ctx):
    async with ctx.database() as db:
        async with db.engine.connect() as conn:
            n = (await conn.exec_driver_sql("SELECT COUNT(*) FROM cronloop_task")).scalar()
    ctx.print(f"{n} task rows")
    return 0


plugin = Plugin(
    name="acme",
    task_modules=("acme_tasks",),
    commands=(
        Command("acme-hello", "greet", hello, lambda p: p.add_argument("who")),
        Command("acme-count", "count the task rows", count),
    ),
)
"""
ACME_TASKS = """
from cronloop import task


@task(every=3600, options={"batch": 7})
async def acme_sweep(ctx):
    return "swept"
"""


def install_plugin(cli: Cli, entry: str) -> None:
    """A distribution `acme` on the test's PYTHONPATH with a `cronloop.plugins` entry
    point, as `pip install` would leave it."""
    info = cli.cwd / "acme-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[cronloop.plugins]\n{entry}\n")


def test_a_third_party_plugin_adds_tasks_and_commands_through_its_entry_point(
    sqlite_cli: Cli,
) -> None:
    sqlite_cli.write_module("acme_plugin", ACME_PLUGIN)
    sqlite_cli.write_module("acme_tasks", ACME_TASKS)
    install_plugin(sqlite_cli, "acme = acme_plugin:plugin")
    assert "acme_sweep" in sqlite_cli.ok("tasks").out
    sqlite_cli.ok("migrate")  # the plugin's commands use the database, which only migrate makes
    assert sqlite_cli.ok("acme-hello", "World").out == "hello World, batch 7\n"
    refused = sqlite_cli.run("acme-hello", "nobody")
    assert (refused.rc, refused.err) == (3, "cronloop: nobody to greet\n")
    assert sqlite_cli.ok("acme-count").out.endswith(" task rows\n")
    assert "backup" in sqlite_cli.ok("--help").out  # the standard plugin is still there


def test_a_plugin_that_fails_to_load_stops_every_command_naming_it(sqlite_cli: Cli) -> None:
    sqlite_cli.write_module("acme_plugin", "raise RuntimeError('acme is broken')\n")
    install_plugin(sqlite_cli, "acme = acme_plugin:plugin")
    for args in (["status"], ["--help"]):
        result = sqlite_cli.run(*args)
        assert result.rc == 78, str(result)
        assert "cannot load plugin 'acme'" in result.err and "acme is broken" in result.err
        assert "Traceback" not in result.err
