"""The chaos tests' harness: scratch databases, real `cronloop run` processes, evidence.

Workers are the console script next to `sys.executable`, with `PYTHONPATH` set to the
checkout this test process imported `worker` from (so a scratch copy tests its own code)
and to this directory (for `chaos_tasks`). They log JSON; a thread per worker collects the
lines, and `Fleet.close` leaves each worker's log next to the test's files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

import cronloop

CRONLOOP = Path(sys.executable).parent / "cronloop"
HERE = Path(__file__).resolve().parent
CHECKOUT = Path(cronloop.__file__).resolve().parents[1]
MYSQL_URL = os.environ.get("CRONLOOP_TEST_MYSQL_URL", "")
REQUIRE_MARIADB = os.environ.get("CRONLOOP_REQUIRE_MARIADB") == "1"
_SCRUBBED = (
    "STATE_DIRECTORY",
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "PYTHONPATH",
    "INVOCATION_ID",
)
Event = dict[str, Any]


def need_mariadb() -> None:
    if MYSQL_URL:
        return
    if REQUIRE_MARIADB:
        pytest.fail("CRONLOOP_REQUIRE_MARIADB=1 but CRONLOOP_TEST_MYSQL_URL is not set")
    pytest.skip("set CRONLOOP_TEST_MYSQL_URL to run the chaos tests")


def _server(database: str | None, driver: str) -> sa.engine.URL:
    return make_url(MYSQL_URL).set(drivername=driver, database=database)


def admin(sql: str) -> None:
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


def base_env() -> dict[str, str]:
    """A clean environment: no params file, JSON logs, this checkout's code."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CRONLOOP_", "CHAOS_")) and k not in _SCRUBBED
    }
    env.update(
        PYTHONPATH=f"{CHECKOUT}{os.pathsep}{HERE}",
        CRONLOOP_PARAM_FILE="",
        CRONLOOP_ALLOW_ROOT="1",
        CRONLOOP_LOG_FORMAT="json",
        PYTHONUNBUFFERED="1",
        CRONLOOP_STARTUP_DB_WAIT_S="10",
    )
    return env


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
        self.proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
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
            return [
                e
                for e in self.events
                if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())
            ]

    def wait_for(self, name: str, timeout: float = 30.0, **fields: Any) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(name, **fields)
            if found:
                return found[0]
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.label}: no {name!r} {fields} in {timeout}s "
                    f"(exit {self.proc.poll()}); log tail:\n{self.tail()}"
                )
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
            self.proc.send_signal(signal.SIGUSR1)  # chaos_tasks prints the asyncio tasks
            time.sleep(1)
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"{self.label} did not exit within {timeout}s:\n{self.tail(120)}"
            ) from None
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

    COMMON = (
        "--task_modules=chaos_tasks",
        "--max_lifetime=0",
        "--poll_interval=0.5",
        "--lease_s=5",
        "--grace_s=1",
        "--shutdown_grace=3",
        "--retry_delay_s=1",
        "--history_retention_days=0",
    )

    def __init__(self, db: ChaosDB, cwd: Path, foreign_off: dict[str, str]) -> None:
        self.db = db
        self.cwd = cwd
        self.foreign_off = foreign_off
        self.workers: list[Worker] = []

    def start(
        self,
        *args: str,
        chaos: dict[str, str] | None = None,
        port: int | None = None,
        label: str | None = None,
    ) -> Worker:
        env = {**base_env(), **self.foreign_off, **(chaos or {})}
        argv = [
            str(CRONLOOP),
            "run",
            *self.COMMON,
            *args,
            f"--database_url={self.db.worker_url(port)}",
        ]
        w = Worker(argv, env, self.cwd, label or f"worker{len(self.workers)}")
        self.workers.append(w)
        return w

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A one-shot `cronloop` command (status, resume...) on this test's database."""
        return subprocess.run(
            [str(CRONLOOP), *args, f"--database_url={self.db.worker_url()}"],
            env={**base_env(), **self.foreign_off},
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

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


def wait_until(predicate: Any, timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- evidence ----------------------------------------------------------------------------

LEASE_S = 5.0  # Fleet.COMMON's lease
POLL_S = 0.5  # Fleet.COMMON's poll interval


def read_trace(path: Path) -> dict[str, list[tuple[int, float]]]:
    """run id -> [(pid, unix time)] of every step the task did."""
    steps: dict[str, list[tuple[int, float]]] = {}
    if path.exists():
        for line in path.read_text(encoding="ascii").splitlines():
            run_id, pid, when, _ = line.split()
            steps.setdefault(run_id, []).append((int(pid), float(when)))
    return steps


def utc(naive: datetime) -> float:
    """A naive UTC datetime read from the database, as a Unix time."""
    return naive.replace(tzinfo=UTC).timestamp()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def execution_of(db: ChaosDB, pid: int) -> Any:
    rows = db.rows("SELECT * FROM cronloop_chaos_exec WHERE task = 'long' AND pid = :pid", pid=pid)
    return rows[0] if rows else None


def start_owner_and_standby(
    fleet: Fleet, chaos: dict[str, str], *args: str
) -> tuple[Worker, Worker]:
    """A starts first and takes `long`; B starts once A runs it, so B is the standby."""
    a = fleet.start(*args, chaos=chaos, label="A")
    a.wait_for("chaos long started", timeout=60)
    b = fleet.start(*args, chaos=chaos, label="B")
    b.wait_for("worker started", timeout=60)
    return a, b
