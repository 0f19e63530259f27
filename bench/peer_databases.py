"""The queue peers' stores, scratch like cronloop's: a database `cronloop_bench_<pid>_<n>`
created on a PostgreSQL server and dropped afterwards (procrastinate), and a key prefix
`cronloop_bench_<pid>_<n>` on one Redis database number (arq), whose keys, and only
those, are deleted afterwards. Never touches a database or a key it did not create.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432"
DEFAULT_REDIS = "redis://127.0.0.1:6379/15"

_serial = itertools.count(1)


def scratch_name() -> str:
    return f"cronloop_bench_{os.getpid()}_{next(_serial)}"


@contextmanager
def postgres_scratch(server: str) -> Iterator[tuple[str, str]]:
    """(label, URL) of a fresh database on `server`, dropped on exit."""
    import psycopg

    name = scratch_name()
    admin = f"{server.rstrip('/')}/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        conn.execute(f'CREATE DATABASE "{name}"')
    label = f"PostgreSQL {version[0].split()[0] if version else '?'}"
    try:
        yield label, f"{server.rstrip('/')}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def redis_scratch(server: str) -> Iterator[tuple[str, str]]:
    """(label, URL) for Redis database `server` with `#prefix` appended: every key the
    side creates contains the prefix (arq's job ids and queue name are built from it);
    the keys matching `*prefix*` are deleted on exit."""
    import redis

    parts = urlsplit(server)
    client = redis.Redis(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 6379,
        db=int(parts.path.strip("/") or 0),
    )
    prefix = scratch_name()
    try:
        version = client.info("server").get("redis_version", "?")
        yield f"Redis {version}", f"{server}#{prefix}"
    finally:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"*{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
        client.close()
