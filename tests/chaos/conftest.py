"""Fixtures for the chaos tests: a scratch MariaDB database per test, workers, a report.

Each test gets its own database on the server named by `CRONLOOP_TEST_MYSQL_URL` (behind
the shared gate of `tests.support.mariadb`), migrated with `cronloop migrate` (the real
command), plus the table the chaos tasks write
their executions into (`chaos_tasks.DDL`; test-only, so it has no migration).

Measurements (takeover time, duplicate and lost counts) are collected with the `report`
fixture and printed in pytest's terminal summary, and appended as JSON lines to
`$CHAOS_REPORT_FILE` when set (`bench/chaos_report.py` renders that file).

This directory is a package (`__init__.py`) so that this conftest is not imported under
the bare name `conftest`, which other test directories import their helpers by.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.support.cli import migrate
from tests.support.mariadb import MYSQL_URL, scratch_database

from .chaos_tasks import DDL
from .harness import ChaosDB, Fleet, base_env
from .proxy import TcpProxy

_RESULTS: list[dict[str, Any]] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on a real database and real workers are `chaos` (and `mariadb`); the
    ledger's own unit tests are not."""
    for item in items:
        if "chaos_db" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.mariadb)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RESULTS:
        return
    terminalreporter.section("chaos measurements")
    for entry in _RESULTS:
        fields = "  ".join(f"{k}={v}" for k, v in entry.items() if k != "test")
        terminalreporter.write_line(f"{entry['test']}: {fields}")


@pytest.fixture
def report(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A dict the test fills with what it measured; printed and saved at the end."""
    entry: dict[str, Any] = {"test": request.node.name}
    yield entry
    if len(entry) > 1:
        _RESULTS.append(entry)
        print(f"\nCHAOS {json.dumps(entry)}")
        target = os.environ.get("CHAOS_REPORT_FILE")
        if target:
            with open(target, "a", encoding="utf-8") as out:
                out.write(json.dumps(entry) + "\n")


# -- the database ---------------------------------------------------------------------------


@pytest.fixture
def chaos_db(tmp_path: Path, cronloop_bin: Path) -> Iterator[ChaosDB]:
    """A scratch database, migrated with `cronloop migrate`, dropped afterwards."""
    with scratch_database("cronloop_chaos") as scratch:
        db = ChaosDB(scratch)
        try:
            migrate(db.worker_url(), tmp_path, base_env())
            with db.engine.begin() as conn:
                conn.exec_driver_sql(DDL)
            yield db
        finally:
            db.engine.dispose()


# -- the workers ------------------------------------------------------------------------------


@pytest.fixture
def fleet(chaos_db: ChaosDB, tmp_path: Path, foreign_tasks_off: dict[str, str]) -> Iterator[Fleet]:
    """The test's workers (`foreign_tasks_off`, from tests/conftest.py, keeps the standard
    tasks out so the load is what each test says it is)."""
    handle = Fleet(chaos_db, tmp_path, foreign_tasks_off)
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    """A TCP proxy in front of the test server: `cut()` it to take the database away
    from the workers that connect through it, `restore()` to bring it back."""
    url = make_url(MYSQL_URL)
    handle = TcpProxy(url.host or "127.0.0.1", url.port or 3306).start()
    try:
        yield handle
    finally:
        handle.close()
