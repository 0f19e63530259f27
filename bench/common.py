"""What every benchmark side shares: scratch databases, the child-process protocol,
statement counting, CPU/RSS readings and percentiles.

Each side (cronloop, APScheduler) runs every scenario in a child process of its own
(`python -m bench.<side> <scenario> --url ... --params JSON --out FILE`), so memory and
CPU figures are that scheduler's alone; the child writes one JSON document:
`{"figures": {name: number}, "samples": {name: [numbers]}, "notes": [text]}`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MARIADB = "mysql://root@127.0.0.1:3306"


# -- databases ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchDb:
    """A throw-away database. `url` is the plain form (`sqlite:///f`, `mysql://...`);
    `async_url`/`sync_url` add the drivers each library wants."""

    backend: str  # "sqlite" or "mariadb"
    label: str  # e.g. "SQLite 3.40.1", "MariaDB 10.11.19"
    url: str
    async_url: str
    sync_url: str


@contextmanager
def scratch_database(
    backend: str, workdir: Path, server: str = DEFAULT_MARIADB
) -> Iterator[BenchDb]:
    """A fresh SQLite file in `workdir`, or a scratch database `cronloop_bench_<pid>_<n>`
    on the MariaDB `server`, dropped afterwards (an existing database is never touched)."""
    if backend == "sqlite":
        import sqlite3

        path = workdir / f"bench-{time.monotonic_ns()}.db"
        yield BenchDb(
            "sqlite",
            f"SQLite {sqlite3.sqlite_version}",
            f"sqlite:///{path}",
            f"sqlite+aiosqlite:///{path}",
            f"sqlite:///{path}",
        )
        return
    base = make_url(server)
    name = f"cronloop_bench_{os.getpid()}_{time.monotonic_ns() % 1_000_000}"
    admin = sa.create_engine(
        base.set(drivername="mysql+pymysql", database=None), poolclass=NullPool
    )
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        version = str(conn.exec_driver_sql("SELECT VERSION()").scalar()).split("-")[0]
    try:
        url = base.set(database=name)
        yield BenchDb(
            "mariadb",
            f"MariaDB {version}",
            url.set(drivername="mysql").render_as_string(False),
            url.set(drivername="mysql+aiomysql").render_as_string(False),
            url.set(drivername="mysql+pymysql").render_as_string(False),
        )
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        admin.dispose()


def server_questions(sync_url: str) -> int | None:
    """MariaDB's global `Questions` counter (statements sent by all clients), or None on
    SQLite. Read at the edges of a measured window; nothing else should use the server.
    Through PyMySQL directly, not SQLAlchemy, so the reading is not counted as one of the
    scheduler's statements."""
    if not sync_url.startswith("mysql"):
        return None
    if sync_url not in _READING_COST:  # what one reading itself sends (SET NAMES, SHOW)
        first = _read_questions(sync_url)
        _READING_COST[sync_url] = _read_questions(sync_url) - first
        _READINGS[sync_url] = 2
    _READINGS[sync_url] += 1
    # less every reading's own statements so far: differences count the others' only
    return _read_questions(sync_url) - _READING_COST[sync_url] * _READINGS[sync_url]


_READING_COST: dict[str, int] = {}
_READINGS: dict[str, int] = {}


def _read_questions(sync_url: str) -> int:
    import pymysql

    url = make_url(sync_url)
    conn = pymysql.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
        database=url.database,
        autocommit=True,
    )  # no SET AUTOCOMMIT
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW GLOBAL STATUS LIKE 'Questions'")
            row = cur.fetchone()
            return int(row[1])
    finally:
        conn.close()


# -- statements -----------------------------------------------------------------------------


@dataclass
class StatementCounter:
    """Counts the statements every SQLAlchemy engine of this process sends (the cursor
    events fire for async engines too: their sync engine does the work), and times those
    whose SQL matches `timed` (e.g. the claim query) in milliseconds."""

    timed: Callable[[str], bool] | None = None
    count: int = 0
    timings_ms: list[float] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)  # time.time() of every statement

    def between(self, start: float, end: float) -> int:
        """Statements sent in [start, end) (wall-clock seconds)."""
        import bisect

        return bisect.bisect_left(self.stamps, end) - bisect.bisect_left(self.stamps, start)

    def install(self) -> StatementCounter:
        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)
        return self

    def reset(self) -> None:
        self.count = 0
        self.timings_ms.clear()
        self.stamps.clear()

    def _before(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool
    ) -> None:
        self.count += 1
        self.stamps.append(time.time())
        if self.timed is not None and self.timed(statement):
            conn.info["bench_t0"] = time.perf_counter()

    def _after(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool
    ) -> None:
        t0 = conn.info.pop("bench_t0", None)
        if t0 is not None:
            self.timings_ms.append((time.perf_counter() - t0) * 1000)


# -- the process ----------------------------------------------------------------------------


def cpu_s() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    """Resident set size of this process now, in MB (from /proc)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (values need not be sorted)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def lateness_figures(samples_ms: Sequence[float]) -> dict[str, float]:
    return {
        "lateness_p50_ms": percentile(samples_ms, 50),
        "lateness_p99_ms": percentile(samples_ms, 99),
        "lateness_max_ms": max(samples_ms) if samples_ms else float("nan"),
    }


# -- the child protocol ---------------------------------------------------------------------


@dataclass
class ChildResult:
    figures: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def write(self, path: Path) -> None:
        path.write_text(
            json.dumps({"figures": self.figures, "samples": self.samples, "notes": self.notes}),
            encoding="utf-8",
        )


@dataclass(frozen=True)
class ChildArgs:
    scenario: str
    url: str  # plain URL: sqlite:///file or mysql://user@host:port/db
    async_url: str
    sync_url: str
    params: dict[str, Any]
    out: Path
    workdir: Path


def child_main(
    scenarios: dict[str, Callable[[ChildArgs], ChildResult]], argv: Sequence[str] | None = None
) -> None:
    """The entry point of a side's child process."""
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(scenarios))
    parser.add_argument("--url", required=True)
    parser.add_argument("--async-url", required=True)
    parser.add_argument("--sync-url", required=True)
    parser.add_argument("--params", default="{}")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    o = parser.parse_args(argv)
    args = ChildArgs(
        o.scenario, o.url, o.async_url, o.sync_url, json.loads(o.params), o.out, o.workdir
    )
    sys.path.insert(0, str(o.workdir))  # generated task modules live there
    paths = [str(o.workdir), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    result = scenarios[o.scenario](args)
    result.write(o.out)
    sys.exit(0)
