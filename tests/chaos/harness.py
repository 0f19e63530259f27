"""The chaos tests' harness: one test's database, its fleet of workers, evidence.

Workers are `tests.support.worker.WorkerProcess`es running the console script next to
`sys.executable`, with this directory on `PYTHONPATH` (for `chaos_tasks`), in the shared
scrubbed environment (`tests.support.env`). Each worker's log is written next to the
test's files as it comes, so a hung or killed worker leaves its log behind.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from tests.support.cli import Result, run_cronloop
from tests.support.env import CRONLOOP
from tests.support.env import base_env as support_env
from tests.support.mariadb import ScratchDatabase
from tests.support.worker import WorkerProcess

HERE = Path(__file__).resolve().parent


def base_env() -> dict[str, str]:
    """The shared scrubbed environment, with the chaos tasks importable."""
    return support_env(pythonpath=[HERE], startup_db_wait_s=10)


class ChaosDB:
    """One test's database: the URL workers use, and a synchronous engine to inspect it."""

    def __init__(self, scratch: ScratchDatabase) -> None:
        self.name = scratch.name
        self.url = sa.make_url(scratch.url("mysql"))
        self.engine: Engine = sa.create_engine(scratch.url("mysql+pymysql"), poolclass=NullPool)

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


class Fleet:
    """The workers of one test, all killed at its end whatever happens."""

    COMMON = (
        "--task_modules=chaos_tasks",
        "--max_lifetime=0",
        "--poll_interval=0.5",
        "--lease_s=5",
        "--max_clock_skew_s=0",  # one server, one clock: takeovers at lease_s, as measured
        "--grace_s=1",
        "--shutdown_grace=3",
        "--retry_delay_s=1",
        "--history_gc.retention_days=0",
    )

    def __init__(self, db: ChaosDB, cwd: Path, foreign_off: dict[str, str]) -> None:
        self.db = db
        self.cwd = cwd
        self.foreign_off = foreign_off
        self.workers: list[WorkerProcess] = []

    def start(
        self,
        *args: str,
        chaos: dict[str, str] | None = None,
        port: int | None = None,
        label: str | None = None,
    ) -> WorkerProcess:
        env = {**base_env(), **self.foreign_off, **(chaos or {})}
        argv = [
            str(CRONLOOP),
            "run",
            *self.COMMON,
            *args,
            f"--database_url={self.db.worker_url(port)}",
        ]
        label = label or f"worker{len(self.workers)}"
        w = WorkerProcess(
            argv,
            env,
            self.cwd,
            label=label,
            log_path=self.cwd / f"{label}-{len(self.workers)}.log",
            dump_signal=signal.SIGUSR1,  # chaos_tasks prints the asyncio tasks
        )
        self.workers.append(w)
        return w

    def cli(self, *args: str) -> Result:
        """A one-shot `cronloop` command (status, resume...) on this test's database."""
        return run_cronloop(
            [*args, f"--database_url={self.db.worker_url()}"],
            {**base_env(), **self.foreign_off},
            self.cwd,
        )

    def stop_all(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM everyone still running, then wait: graceful exits release leases."""
        for w in self.workers:
            w.signal(signal.SIGCONT)
            w.signal(signal.SIGTERM)
        return [w.wait(timeout) for w in self.workers]

    def close(self) -> None:
        """Kill what is left (their logs are already next to the test's files)."""
        for w in self.workers:
            w.kill()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` s. Only
    for what no process announces (rows in the database); a worker's log line is waited
    for with `WorkerProcess.wait_for`."""
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


def execution_of(db: ChaosDB, pid: int) -> Any:
    rows = db.rows("SELECT * FROM cronloop_chaos_exec WHERE task = 'long' AND pid = :pid", pid=pid)
    return rows[0] if rows else None


def start_owner_and_standby(
    fleet: Fleet, chaos: dict[str, str], *args: str
) -> tuple[WorkerProcess, WorkerProcess]:
    """A starts first and takes `long`; B starts once A runs it, so B is the standby."""
    a = fleet.start(*args, chaos=chaos, label="A")
    a.wait_for("chaos long started", timeout=60)
    b = fleet.start(*args, chaos=chaos, label="B")
    b.wait_for("worker started", timeout=60)
    return a, b
