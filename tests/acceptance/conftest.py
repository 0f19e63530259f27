"""Harness for the acceptance tests: the installed `cronloop` command, in real subprocesses.

Every test gets a `Cli` bound to its own state directory (the embedded SQLite file lands
there) or, for the MariaDB variant, to a scratch database created for the test module
and migrated with `cronloop migrate`. Background workers (`Cli.start`) log JSON lines;
a thread reads them so a test waits for an event with a timeout instead of sleeping.
The processes run as whoever runs pytest (root here), hence `CRONLOOP_ALLOW_ROOT=1`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from cronloop.store.sql.tables import runs, tasks

CRONLOOP = Path(sys.executable).parent / "cronloop"
HERE = Path(__file__).resolve().parent
MYSQL_URL = os.environ.get("CRONLOOP_TEST_MYSQL_URL", "")
REQUIRE_MARIADB = os.environ.get("CRONLOOP_REQUIRE_MARIADB") == "1"
BACKENDS = ["sqlite", pytest.param("mariadb", marks=pytest.mark.mariadb)]
COMMAND_TIMEOUT_S = 60.0
# The service's environment that must not leak from the machine running the tests.
_SCRUBBED = (
    "STATE_DIRECTORY",
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "PYTHONPATH",
)

Event = dict[str, Any]
Env = Mapping[str, str | None]


@dataclass
class Result:
    """A finished command: exit code, stdout, stderr."""

    rc: int
    out: str
    err: str

    @property
    def events(self) -> list[Event]:
        return [e for e in map(_parse_json, self.err.splitlines()) if e is not None]

    def __str__(self) -> str:
        return f"exit {self.rc}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def _parse_json(line: str) -> Event | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def matches(event: Event, name: str, fields: dict[str, Any]) -> bool:
    return event.get("event") == name and all(event.get(k) == v for k, v in fields.items())


class Worker:
    """A background `cronloop run`; its stderr is read line by line by a thread."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.lines: list[str] = []
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.lines.append(line)
                event = _parse_json(line)
                if event is not None:
                    self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def find(self, name: str, since: int = 0, **fields: Any) -> list[Event]:
        with self._cond:
            return [e for e in self.events[since:] if matches(e, name, fields)]

    def mark(self) -> int:
        """The number of events so far: pass it as `since` to look only at later ones."""
        with self._cond:
            return len(self.events)

    def wait_for(
        self, name: str, timeout: float = 10.0, since: int = 0, count: int = 1, **fields: Any
    ) -> Event:
        """The `count`-th event named `name` with these fields; fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [e for e in self.events[since:] if matches(e, name, fields)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._cond.wait(min(left, 0.1))
        raise AssertionError(
            f"no {count}x {name!r} {fields} within {timeout}s (exit {self.proc.poll()}); "
            f"log tail:\n" + "\n".join(self.lines[-40:])
        )

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 20.0) -> int:
        """The exit code; fails (and kills the process) if it does not exit in time."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"worker did not exit within {timeout}s; log tail:\n" + "\n".join(self.lines[-40:])
            ) from None
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


@dataclass
class Cli:
    """Runs `cronloop` against one test's database, with the sample task module."""

    backend: str
    cwd: Path
    env: dict[str, str]
    db_args: list[str]
    inspect_url: str
    workers: list[Worker] = field(default_factory=list)

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
        proc = subprocess.run(
            self.argv(args),
            env=self._env(tasks, env),
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

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

    def start(self, *args: str, tasks: str | None = None, env: Env | None = None) -> Worker:
        worker = Worker(self.argv(["run", *args]), self._env(tasks, env), self.cwd)
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
    """The environment of every cronloop process: clean, no params file, JSON logs."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("CRONLOOP_") and k not in _SCRUBBED
    }
    env.update(
        PYTHONPATH=f"{HERE}{os.pathsep}{cwd}",
        STATE_DIRECTORY=str(cwd / "state"),
        CRONLOOP_PARAM_FILE="",
        CRONLOOP_ALLOW_ROOT="1",
        CRONLOOP_LOG_FORMAT="json",
        CRONLOOP_STARTUP_DB_WAIT_S="5",
        PYTHONUNBUFFERED="1",
    )
    return env


def _need_mariadb() -> None:
    if MYSQL_URL:
        return
    if REQUIRE_MARIADB:
        pytest.fail("CRONLOOP_REQUIRE_MARIADB=1 but CRONLOOP_TEST_MYSQL_URL is not set")
    pytest.skip("set CRONLOOP_TEST_MYSQL_URL to run the MariaDB tests")


def server_url(database: str | None, driver: str) -> str:
    url = make_url(MYSQL_URL).set(drivername=driver, database=database)
    return url.render_as_string(hide_password=False)


def admin(sql: str) -> None:
    engine = sa.create_engine(server_url(None, "mysql+pymysql"), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def cronloop_bin() -> Path:
    if not os.access(CRONLOOP, os.X_OK):
        pytest.fail(f"the console script {CRONLOOP} is missing: `pip install -e .` in this venv")
    return CRONLOOP


@pytest.fixture(scope="session")
def foreign_tasks_off(
    cronloop_bin: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """`CRONLOOP_<TASK>__ENABLED=0` for every task installed by entry points (the standard
    tasks), so that a test's `run --once` runs only the sample tasks it chose."""
    cwd = tmp_path_factory.mktemp("foreign")
    proc = subprocess.run(
        [str(cronloop_bin), "tasks", "--task_modules="],
        env=base_env(cwd),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    names = [line.split("|")[0].strip() for line in proc.stdout.splitlines()[2:] if "|" in line]
    return {f"CRONLOOP_{re.sub(r'[^A-Za-z0-9]', '_', n).upper()}__ENABLED": "0" for n in names}


def _scratch_database(prefix: str) -> tuple[str, str]:
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    return name, server_url(name, "mysql")


@pytest.fixture(scope="module")
def mariadb_url(cronloop_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scratch database for this test module, migrated by `cronloop migrate`."""
    _need_mariadb()
    name, url = _scratch_database("cronloop_acc")
    try:
        cwd = tmp_path_factory.mktemp("migrate")
        proc = subprocess.run(
            [str(cronloop_bin), "migrate", f"--database_url={url}"],
            env=base_env(cwd),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "schema migrated: empty -> " in proc.stdout, proc.stdout
        yield url
    finally:
        admin(f"DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def empty_mariadb_url() -> Iterator[str]:
    """A scratch database with no tables at all (never migrated)."""
    _need_mariadb()
    name, url = _scratch_database("cronloop_acc_empty")
    try:
        yield url
    finally:
        admin(f"DROP DATABASE IF EXISTS `{name}`")


def _clear(url: str) -> None:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(runs.delete())
            conn.execute(tasks.delete())
    finally:
        engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_cli(
    backend: str,
    cwd: Path,
    extra_env: dict[str, str],
    get_mariadb: Callable[[], str],
    *,
    clear: bool = True,
) -> Cli:
    """A `Cli` for `backend`; the MariaDB database is emptied first unless `clear` is off."""
    env = {**base_env(cwd), **extra_env}
    if backend == "sqlite":
        inspect_url = f"sqlite:///{cwd / 'state' / 'cronloop.db'}"
        return Cli(backend, cwd, env, [], inspect_url)
    url = get_mariadb()
    inspect_url = make_url(url).set(drivername="mysql+pymysql").render_as_string(False)
    if clear:
        _clear(inspect_url)
    return Cli(backend, cwd, env, [f"--database_url={url}"], inspect_url)


@pytest.fixture
def cli(
    backend: str, tmp_path: Path, foreign_tasks_off: dict[str, str], request: pytest.FixtureRequest
) -> Iterator[Cli]:
    """The CLI on this test's database (embedded SQLite, or the module's MariaDB one)."""
    handle = make_cli(
        backend, tmp_path, foreign_tasks_off, lambda: str(request.getfixturevalue("mariadb_url"))
    )
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
        made.append(make_cli("mariadb", tmp_path, foreign_tasks_off, lambda: url, clear=False))
        return made[-1]

    try:
        yield factory
    finally:
        for handle in made:
            handle.close()
