"""Harness for the chaos tests: real `cronloop run` processes on a scratch MariaDB database.

Each test gets its own database on the server named by `CRONLOOP_TEST_MYSQL_URL`,
migrated with `cronloop migrate` (the real command), plus the table the chaos tasks write
their executions into (`chaos_tasks.DDL`; test-only, so it has no migration). Workers are
the console script next to `sys.executable`, with `PYTHONPATH` set to the checkout this
test process imported `worker` from (so a scratch copy tests its own code) and to this
directory (for `chaos_tasks`). They log JSON; a thread per worker collects the lines.

Measurements (takeover time, duplicate and lost counts) are collected with the `report`
fixture and printed in pytest's terminal summary, and appended as JSON lines to
`$CHAOS_REPORT_FILE` when set (`bench/chaos_report.py` renders that file).
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

import worker
from chaos_tasks import DDL

CRONLOOP = Path(sys.executable).parent / "cronloop"
HERE = Path(__file__).resolve().parent
CHECKOUT = Path(worker.__file__).resolve().parents[1]
MYSQL_URL = os.environ.get("CRONLOOP_TEST_MYSQL_URL", "")
REQUIRE_MARIADB = os.environ.get("CRONLOOP_REQUIRE_MARIADB") == "1"
_SCRUBBED = ("STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "JOURNAL_STREAM",
             "WATCHDOG_USEC", "WATCHDOG_PID", "PYTHONPATH", "INVOCATION_ID")
Event = dict[str, Any]
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

def _need_mariadb() -> None:
    if MYSQL_URL:
        return
    if REQUIRE_MARIADB:
        pytest.fail("CRONLOOP_REQUIRE_MARIADB=1 but CRONLOOP_TEST_MYSQL_URL is not set")
    pytest.skip("set CRONLOOP_TEST_MYSQL_URL to run the chaos tests")


def _server(database: str | None, driver: str) -> sa.engine.URL:
    return make_url(MYSQL_URL).set(drivername=driver, database=database)


def _admin(sql: str) -> None:
    engine = sa.create_engine(_server(None, "mysql+pymysql"), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


class ChaosDB:
    """One test's database: the URL workers use, and a synchronous engine to inspect it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.url = _server(name, "mysql")
        self.engine: Engine = sa.create_engine(_server(name, "mysql+pymysql"), poolclass=NullPool)

    def worker_url(self, port: int | None = None) -> str:
        """The URL for `--database_url`, optionally through a proxy on 127.0.0.1:port."""
        url = self.url if port is None else self.url.set(host="127.0.0.1", port=port)
        return url.render_as_string(hide_password=False)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(sql), params).all())

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()


@pytest.fixture
def chaos_db(tmp_path: Path) -> Iterator[ChaosDB]:
    """A scratch database, migrated with `cronloop migrate`, dropped afterwards."""
    _need_mariadb()
    if not os.access(CRONLOOP, os.X_OK):
        pytest.fail(f"the console script {CRONLOOP} is missing: `pip install -e .`")
    name = f"cronloop_chaos_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    _admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    db = ChaosDB(name)
    try:
        proc = subprocess.run([str(CRONLOOP), "migrate", f"--database_url={db.worker_url()}"],
                              env=base_env(), cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        with db.engine.begin() as conn:
            conn.exec_driver_sql(DDL)
        yield db
    finally:
        db.engine.dispose()
        _admin(f"DROP DATABASE IF EXISTS `{name}`")


# -- the workers ------------------------------------------------------------------------------

def base_env() -> dict[str, str]:
    """A clean environment: no params file, JSON logs, this checkout's code."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CRONLOOP_", "CHAOS_")) and k not in _SCRUBBED}
    env.update(PYTHONPATH=f"{CHECKOUT}{os.pathsep}{HERE}", CRONLOOP_PARAM_FILE="",
               CRONLOOP_ALLOW_ROOT="1", CRONLOOP_LOG_FORMAT="json", PYTHONUNBUFFERED="1",
               CRONLOOP_STARTUP_DB_WAIT_S="10")
    return env


@pytest.fixture(scope="session")
def foreign_tasks_off() -> dict[str, str]:
    """`CRONLOOP_<TASK>__ENABLED=0` for the standard tasks (entry points), so the chaos
    workers run only the chaos tasks and the load is what each test says it is."""
    proc = subprocess.run([str(CRONLOOP), "tasks", "--task_modules="], env=base_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    names = [line.split("|")[0].strip() for line in proc.stdout.splitlines()[2:] if "|" in line]
    return {f"CRONLOOP_{re.sub(r'[^A-Za-z0-9]', '_', n).upper()}__ENABLED": "0" for n in names}


def _parse(line: str) -> Event | None:
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class Worker:
    """A background `cronloop run`; a thread collects its stderr (JSON lines)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], cwd: Path, label: str) -> None:
        self.label = label
        self.proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pid = self.proc.pid
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
                event = _parse(line)
                if event is not None:
                    event["_t"] = time.time()
                    self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def find(self, name: str, **fields: Any) -> list[Event]:
        with self._cond:
            return [e for e in self.events
                    if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())]

    def wait_for(self, name: str, timeout: float = 30.0, **fields: Any) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(name, **fields)
            if found:
                return found[0]
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{self.label}: no {name!r} {fields} in {timeout}s "
                                     f"(exit {self.proc.poll()}); log tail:\n{self.tail()}")
            with self._cond:
                self._cond.wait(0.1)

    def tail(self, n: int = 30) -> str:
        with self._cond:
            return "\n".join(self.lines[-n:])

    def send(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"{self.label} did not exit within {timeout}s:\n{self.tail()}") from None
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot die otherwise
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(5)


class Fleet:
    """The workers of one test, all killed at its end whatever happens."""

    COMMON = ("--task_modules=chaos_tasks", "--max_lifetime=0", "--poll_interval=0.5",
              "--lease_s=5", "--grace_s=1", "--shutdown_grace=3", "--retry_delay_s=1",
              "--history_retention_days=0")

    def __init__(self, db: ChaosDB, cwd: Path, foreign_off: dict[str, str]) -> None:
        self.db = db
        self.cwd = cwd
        self.foreign_off = foreign_off
        self.workers: list[Worker] = []

    def start(self, *args: str, chaos: dict[str, str] | None = None, port: int | None = None,
              label: str | None = None) -> Worker:
        env = {**base_env(), **self.foreign_off, **(chaos or {})}
        argv = [str(CRONLOOP), "run", *self.COMMON, *args,
                f"--database_url={self.db.worker_url(port)}"]
        w = Worker(argv, env, self.cwd, label or f"worker{len(self.workers)}")
        self.workers.append(w)
        return w

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A one-shot `cronloop` command (status, resume...) on this test's database."""
        return subprocess.run([str(CRONLOOP), *args, f"--database_url={self.db.worker_url()}"],
                              env={**base_env(), **self.foreign_off}, cwd=self.cwd,
                              capture_output=True, text=True, timeout=60, check=False)

    def stop_all(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM everyone still running, then wait: graceful exits release leases."""
        for w in self.workers:
            w.send(signal.SIGCONT)
            w.send(signal.SIGTERM)
        return [w.wait(timeout) for w in self.workers]

    def close(self) -> None:
        """Kill what is left; keep every worker's log next to the test's files."""
        for w in self.workers:
            w.kill()
            (self.cwd / f"{w.label}-{w.pid}.log").write_text("\n".join(w.lines) + "\n")


@pytest.fixture
def fleet(chaos_db: ChaosDB, tmp_path: Path, foreign_tasks_off: dict[str, str]) -> Iterator[Fleet]:
    handle = Fleet(chaos_db, tmp_path, foreign_tasks_off)
    try:
        yield handle
    finally:
        handle.close()


def wait_until(predicate: Any, timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
