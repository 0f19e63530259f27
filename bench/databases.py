"""The benchmark's databases: a fresh SQLite file, or a scratch database on a MariaDB
server (the tests' scratch-database helpers, `tests.support.mariadb`, with the bench's
own `--server`), MariaDB's server-wide statement counter, and the CPU time of the server
process (read from /proc: the server must run on this machine).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from bench.measure import listener_pid, process_cpu_s
from tests.support.mariadb import scratch_database as mariadb_scratch
from tests.support.mariadb import server_version

DEFAULT_MARIADB = "mysql://root@127.0.0.1:3306"


@dataclass(frozen=True)
class BenchDb:
    """A throw-away database. `url` is the plain form (`sqlite:///f`, `mysql://...`);
    `async_url`/`sync_url` add the drivers each library wants."""

    backend: str  # "sqlite", "mariadb"; the queue peers' "postgresql", "redis"
    label: str  # e.g. "SQLite 3.40.1", "MariaDB 10.11.19"
    url: str
    async_url: str
    sync_url: str


@contextmanager
def scratch_database(
    backend: str, workdir: Path, server: str = DEFAULT_MARIADB, peers: dict[str, str] | None = None
) -> Iterator[BenchDb]:
    """A fresh SQLite file in `workdir`, or a scratch database `cronloop_bench_<pid>_<id>`
    on the MariaDB `server`, dropped afterwards (an existing database is never touched);
    for the queue peers, `postgresql` and `redis` on the servers in `peers`
    (bench/peer_databases.py)."""
    if backend in ("postgresql", "redis"):
        from bench import peer_databases as pd

        scratch = pd.postgres_scratch if backend == "postgresql" else pd.redis_scratch
        default = pd.DEFAULT_POSTGRES if backend == "postgresql" else pd.DEFAULT_REDIS
        with scratch((peers or {}).get(backend, default)) as (label, url):
            yield BenchDb(backend, label, url, url, url)
        return
    if backend == "sqlite":
        path = workdir / f"bench-{time.monotonic_ns()}.db"
        yield BenchDb(
            "sqlite",
            f"SQLite {sqlite3.sqlite_version}",
            f"sqlite:///{path}",
            f"sqlite+aiosqlite:///{path}",
            f"sqlite:///{path}",
        )
        return
    version = server_version(server)
    with mariadb_scratch("cronloop_bench", server) as db:
        yield BenchDb(
            "mariadb",
            f"MariaDB {version}",
            db.url("mysql"),
            db.url("mysql+aiomysql"),
            db.url("mysql+pymysql"),
        )


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


def server_cpu_s(sync_url: str) -> float | None:
    """CPU seconds (user + system) of the MariaDB server process behind `sync_url` so far:
    the process listening on its port on this machine. None on SQLite (the database is
    the scheduler's own process) or when the server is not a local process."""
    if not sync_url.startswith("mysql"):
        return None
    url = make_url(sync_url)
    if url.host not in (None, "127.0.0.1", "localhost", "::1"):
        return None
    port = url.port or 3306
    pid = _SERVER_PIDS.get(port) or listener_pid(port)  # a scan of /proc: ~15 ms
    cpu = None if pid is None else process_cpu_s(pid)
    if cpu is None:
        _SERVER_PIDS.pop(port, None)  # gone (restarted): look again next time
    elif pid is not None:
        _SERVER_PIDS[port] = pid
    return cpu


_SERVER_PIDS: dict[int, int] = {}
