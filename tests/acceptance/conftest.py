"""Harness for the acceptance tests: the installed `cronloop` command, in real subprocesses.

Every test gets a `Cli` bound to its own state directory (the embedded SQLite file lands
there) or, for the MariaDB variant, to a scratch database created for the test module
and migrated with `cronloop migrate`. Background workers (`Cli.start`) are
`tests.support.worker.WorkerProcess`es: their JSON log is read line by line, so a test
waits for an event with a timeout instead of sleeping. The environment, the MariaDB gate,
the console script and the standard tasks switched off come from `tests.support` and
`tests/conftest.py`, shared with the chaos tests and the bench.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from cronloop.store.sql.tables import jobs, runs, tasks
from tests.support.cli import COMMAND_TIMEOUT_S, Result, migrate, run_cronloop
from tests.support.env import CRONLOOP
from tests.support.env import base_env as support_env
from tests.support.mariadb import ScratchDatabase, scratch_database
from tests.support.worker import Event, WorkerProcess

HERE = Path(__file__).resolve().parent
BACKENDS = ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)]
Env = Mapping[str, str | None]


@dataclass
class Cli:
    """Runs `cronloop` against one test's database, with the sample task module."""

    backend: str
    cwd: Path
    env: dict[str, str]
    db_args: list[str]
    inspect_url: str
    workers: list[WorkerProcess] = field(default_factory=list)
    # one condition for all of this test's workers: see `wait_for_total`
    cond: threading.Condition = field(default_factory=threading.Condition)

    def argv(self, args: Sequence[str]) -> list[str]:
        extra = (
            []
            if any(a.startswith("--task_modules") for a in args)
            else ["--task_modules=sample_tasks"]
        )
        return [str(CRONLOOP), *args, *extra, *self.db_args]

    def _env(self, tasks: str | None, env: Env | None) -> dict[str, str]:
        """This test's environment; `env` adds variables, or removes them with None."""
        merged = dict(self.env)
        if tasks is not None:
            merged["SAMPLE_TASKS"] = tasks
        for key, value in (env or {}).items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        return merged

    def run(
        self,
        *args: str,
        tasks: str | None = None,
        env: Env | None = None,
        timeout: float = COMMAND_TIMEOUT_S,
    ) -> Result:
        return run_cronloop(self.argv(args)[1:], self._env(tasks, env), self.cwd, timeout)

    def ok(
        self,
        *args: str,
        tasks: str | None = None,
        env: Env | None = None,
        timeout: float = COMMAND_TIMEOUT_S,
    ) -> Result:
        """`run`, asserting exit 0."""
        result = self.run(*args, tasks=tasks, env=env, timeout=timeout)
        assert result.rc == 0, str(result)
        return result

    def start(self, *args: str, tasks: str | None = None, env: Env | None = None) -> WorkerProcess:
        label = f"worker{len(self.workers)}"
        worker = WorkerProcess(
            self.argv(["run", *args]), self._env(tasks, env), self.cwd, label=label, cond=self.cond
        )
        self.workers.append(worker)
        return worker

    def status(self) -> dict[str, Event]:
        result = self.ok("status", "--json")
        return {row["name"]: row for row in json.loads(result.out)}

    def history_rows(self, task: str | None = None) -> list[dict[str, Any]]:
        """The run history table, read directly (oldest first)."""
        query = sa.select(runs).order_by(runs.c.id)
        if task is not None:
            query = query.where(runs.c.task_name == task)
        engine = sa.create_engine(self.inspect_url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                return [dict(row._mapping) for row in conn.execute(query)]
        finally:
            engine.dispose()

    def write_params(self, text: str, name: str = "cronloop.params", mode: int = 0o600) -> Path:
        path = self.cwd / name
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)
        return path

    def write_module(self, name: str, source: str) -> None:
        """A task module on the workers' PYTHONPATH (the test's directory)."""
        (self.cwd / f"{name}.py").write_text(source, encoding="utf-8")

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()


def base_env(cwd: Path) -> dict[str, str]:
    """Every cronloop process of a test: the shared scrubbed environment, the sample
    tasks and the test's directory importable, its own state directory."""
    return support_env(pythonpath=[HERE, cwd], state_dir=cwd / "state", startup_db_wait_s=5)


@pytest.fixture(scope="module")
def mariadb_db(
    cronloop_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScratchDatabase]:
    """A scratch database for this test module, migrated by `cronloop migrate`."""
    with scratch_database("cronloop_acc") as db:
        result = migrate(db.url(), tmp_path_factory.mktemp("migrate"))
        assert "schema migrated: empty -> " in result.out, result.out
        yield db


@pytest.fixture(scope="module")
def mariadb_url(mariadb_db: ScratchDatabase) -> str:
    return mariadb_db.url()


@pytest.fixture
def empty_mariadb_url() -> Iterator[str]:
    """A scratch database with no tables at all (never migrated)."""
    with scratch_database("cronloop_acc_empty") as db:
        yield db.url()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_cli(
    backend: str,
    cwd: Path,
    extra_env: dict[str, str],
    get_mariadb: Callable[[], str],
) -> Cli:
    """A `Cli` for `backend` (its MariaDB database as `get_mariadb` gives it)."""
    env = {**base_env(cwd), **extra_env}
    if backend == "sqlite":
        inspect_url = f"sqlite:///{cwd / 'state' / 'cronloop.db'}"
        return Cli(backend, cwd, env, [], inspect_url)
    url = get_mariadb()
    inspect_url = sa.make_url(url).set(drivername="mysql+pymysql").render_as_string(False)
    return Cli(backend, cwd, env, [f"--database_url={url}"], inspect_url)


@pytest.fixture
def cli(
    backend: str, tmp_path: Path, foreign_tasks_off: dict[str, str], request: pytest.FixtureRequest
) -> Iterator[Cli]:
    """The CLI on this test's database (embedded SQLite, or the module's MariaDB one,
    emptied first)."""

    def module_database() -> str:
        db: ScratchDatabase = request.getfixturevalue("mariadb_db")
        db.clear(runs, tasks, jobs)
        return db.url()

    handle = make_cli(backend, tmp_path, foreign_tasks_off, module_database)
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture
def sqlite_cli(tmp_path: Path, foreign_tasks_off: dict[str, str]) -> Iterator[Cli]:
    """For tests that never open a database (configuration errors): SQLite only."""
    handle = make_cli("sqlite", tmp_path, foreign_tasks_off, lambda: "")
    try:
        yield handle
    finally:
        handle.close()


@pytest.fixture
def cli_on(tmp_path: Path, foreign_tasks_off: dict[str, str]) -> Iterator[Callable[[str], Cli]]:
    """A `Cli` on a given MariaDB URL, whose database is left as it is (not emptied)."""
    made: list[Cli] = []

    def factory(url: str) -> Cli:
        made.append(make_cli("mariadb", tmp_path, foreign_tasks_off, lambda: url))
        return made[-1]

    try:
        yield factory
    finally:
        for handle in made:
            handle.close()
