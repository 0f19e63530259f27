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
