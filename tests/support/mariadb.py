"""The one MariaDB gate and the scratch databases on that server.

The server is named by `CRONLOOP_TEST_MYSQL_URL` (for example
`mysql+aiomysql://root@127.0.0.1:3306/test`; only its server part is used). Without it
the MariaDB tests skip, unless `CRONLOOP_REQUIRE_MARIADB=1` (CI), which turns the skip
into a failure so that they can never silently not run. Every scratch database has a
name of its own (`<prefix>_<pid>_<random>`), so parallel sessions do not collide, and is
dropped afterwards; an existing database is never touched.

The bench uses the same helpers with its own `--server`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

MYSQL_URL = os.environ.get("CRONLOOP_TEST_MYSQL_URL", "")
REQUIRE_MARIADB = os.environ.get("CRONLOOP_REQUIRE_MARIADB") == "1"
ADMIN_DRIVER = "mysql+pymysql"  # synchronous: usable from any thread or event loop


def need_mariadb() -> str:
    """The server URL; skips the calling test without one, or fails it under CI."""
    if MYSQL_URL:
        return MYSQL_URL
    import pytest  # only the tests gate; the bench names its server itself

    if REQUIRE_MARIADB:
        pytest.fail("CRONLOOP_REQUIRE_MARIADB=1 but CRONLOOP_TEST_MYSQL_URL is not set")
    pytest.skip("set CRONLOOP_TEST_MYSQL_URL to run the MariaDB tests")


def server_url(database: str | None, driver: str = "mysql", server: str | None = None) -> str:
    """`server` (default: the tests' server) with this database and driver, password kept:
    for `--database_url` and engines, never for a log line."""
    url = make_url(server or MYSQL_URL).set(drivername=driver, database=database)
    return url.render_as_string(hide_password=False)


def admin(sql: str, server: str | None = None) -> None:
    """One statement as the server's administrator, outside any database."""
    engine = sa.create_engine(server_url(None, ADMIN_DRIVER, server), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def server_version(server: str | None = None) -> str:
    """`10.11.19` (the version without the distribution's suffix)."""
    engine = sa.create_engine(server_url(None, ADMIN_DRIVER, server), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SELECT VERSION()").scalar()).split("-")[0]
    finally:
        engine.dispose()


@dataclass(frozen=True)
class ScratchDatabase:
    """An empty database of our own on the server."""

    name: str
    server: str

    def url(self, driver: str = "mysql") -> str:
        return server_url(self.name, driver, self.server)

    def clear(self, *tables: sa.Table) -> None:
        """Delete every row of `tables` (children first), keeping the schema."""
        engine = sa.create_engine(self.url(ADMIN_DRIVER), poolclass=NullPool)
        try:
            with engine.begin() as conn:
                for table in tables:
                    conn.execute(table.delete())
        finally:
            engine.dispose()


@contextmanager
def scratch_database(prefix: str, server: str | None = None) -> Iterator[ScratchDatabase]:
    """A new empty utf8mb4 database `<prefix>_<pid>_<random>`, dropped on the way out."""
    server = server or need_mariadb()
    db = ScratchDatabase(f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}", server)
    admin(f"CREATE DATABASE `{db.name}` CHARACTER SET utf8mb4", server)
    try:
        yield db
    finally:
        admin(f"DROP DATABASE IF EXISTS `{db.name}`", server)
