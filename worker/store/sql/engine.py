"""The thin connector: an engine from the settings, and the database clock.

Domain SQL lives in the store's parts (`claims`, `record`, ...); this module only knows how
to reach a database and what differs between dialects at the connection level.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, literal_column, type_coerce
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.elements import ColumnElement

from cronloop.config.settings import ConfigError, Settings, state_directory
from cronloop.config.values import mask_url
from cronloop.files import create_private_file, private_dir
from cronloop.store.sql.hosts import attach_failover, host_list
from cronloop.store.sql.tables import UTCDateTime

SQLITE_FILE = "cronloop.db"
_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+pysqlite": "sqlite+aiosqlite",
    "mysql": "mysql+aiomysql",
    "mysql+pymysql": "mysql+aiomysql",
    "mysql+mysqldb": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
    "mariadb+pymysql": "mysql+aiomysql",
    "mariadb+aiomysql": "mysql+aiomysql",
}


def resolve_url(settings: Settings) -> URL:
    """The URL to connect to: the embedded SQLite file unless `database_url` is set.

    Synchronous driver names are mapped to their asyncio drivers so an ops person can
    write `mysql://...` as everywhere else. The password from `database_password`
    (or the systemd credential) is injected here and never written back to settings.
    """
    if not settings.database_url:
        return make_url(f"sqlite+aiosqlite:///{embedded_file(settings)}")
    try:
        url = make_url(settings.database_url)
    except ArgumentError:
        raise ConfigError(
            "database_url: not a database URL (expected e.g. mysql://user@host/db or "
            f"sqlite:////var/lib/cronloop/cronloop.db); from {settings.sources.get('database_url')}"
        ) from None
    driver = _DRIVERS.get(url.drivername, url.drivername)
    if driver not in ("sqlite+aiosqlite", "mysql+aiomysql"):
        raise ConfigError(
            f"database_url: unsupported driver {url.drivername!r}; use mysql:// (MySQL or "
            f"MariaDB, through aiomysql) or sqlite://; from {settings.sources.get('database_url')}"
        )
    url = url.set(drivername=driver)
    if settings.database_hosts:
        if driver != "mysql+aiomysql":
            raise ConfigError(
                "database_hosts: only for MySQL/MariaDB (several servers of one database); "
                f"database_url is {url.get_backend_name()}; from "
                f"{settings.sources.get('database_hosts')}"
            )
        first = host_list(url, settings.database_hosts).hosts[0]
        url = url.set(host=first.name, port=first.port)
    if settings.database_password is not None:
        url = url.set(password=settings.database_password.reveal())
    if driver == "mysql+aiomysql" and "charset" not in url.query:
        url = url.update_query_dict({"charset": "utf8mb4"})
    return url


def embedded_file(settings: Settings) -> Path:
    """The embedded SQLite file: `cronloop.db` in the state directory (`config.paths`)."""
    return (state_directory(param_files=settings.param_files) / SQLITE_FILE).resolve()


def sqlite_file(url: URL) -> Path | None:
    """The file a SQLite URL names; None for a server database or an in-memory one."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(str(url.database))


def database_label(settings: Settings) -> str:
    """What `status` and `check-config` show: the SQLite file, or the URL with its password
    masked (never the password injected from a credential)."""
    if not settings.database_url:
        return str(embedded_file(settings))
    try:
        path = sqlite_file(make_url(settings.database_url))
    except ArgumentError:
        path = None
    return str(path.resolve()) if path else mask_url(settings.database_url)


def _prepare_sqlite_file(path: Path) -> None:
    """Create the file (and its directory) private before SQLite does: SQLite gives the
    `-wal` and `-shm` files the database's mode, so the three are 0600."""
    try:
        private_dir(path.parent)
        create_private_file(path)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the database {path}: {exc.strerror or exc} (is this the "
            "service's user? e.g. `sudo -u cronloop cronloop ...`)"
        ) from None


PING_IDLE_S = 10.0


def create_engine(settings: Settings, *, url: URL | None = None, **kw: Any) -> AsyncEngine:
    """An engine tuned per dialect: WAL and immediate transactions on SQLite, pre-ping,
    recycling and READ COMMITTED on MySQL/MariaDB."""
    url = url or resolve_url(settings)
    if url.get_backend_name() == "sqlite":
        path = sqlite_file(url)
        if path is not None:
            _prepare_sqlite_file(path)
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kw)
        _sqlite_tuning(engine)
        return engine
    options: dict[str, Any] = {
        # not pool_pre_ping: a ping per checkout was two of the seven round trips of a run;
        # only a connection idle for PING_IDLE_S is pinged (see _ping_when_idle)
        # every use of a connection ends its own transaction (engine.begin(), or
        # Connection.close() rolling back): the pool's extra ROLLBACK would only add a
        # round trip to every transaction
        "pool_reset_on_return": None,
        "pool_recycle": 1800,
        "isolation_level": "READ COMMITTED",
        # a hard cap (no overflow): workers x db_pool_size must stay under the server's
        # max_connections, or "Too many connections" would fail runs instead of queueing
        "pool_size": settings.db_pool_size,
        "max_overflow": 0,
        "pool_timeout": 60,
        "connect_args": {"connect_timeout": 10},
    }
    options.update(kw)
    engine = create_async_engine(url, **options)
    _ping_when_idle(engine)
    if len(settings.database_hosts) > 1:
        attach_failover(engine, host_list(url, settings.database_hosts))
    return engine


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection before use only if it sat idle for `PING_IDLE_S`: one in
    steady use has just proved it works, and a server that went away since is caught by
    the caller's retry; an idle one may have been closed (restart, `wait_timeout`, a
    firewall) and is replaced silently instead."""
    sync = engine.sync_engine

    @event.listens_for(sync, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(sync, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < PING_IDLE_S:
            return
        try:
            sync.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise sa_exc.DisconnectionError("stale pooled connection") from exc


def create_short_lived_engine(url: URL, timeout_s: float) -> AsyncEngine:
    """An engine used once, by a dying process (the watchdog's strike): no pool, and
    every wait (connect, busy database, row lock) bounded by about `timeout_s`, because
    an outage must not keep a wedged process alive."""
    seconds = max(1, int(timeout_s))
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": seconds}, poolclass=NullPool)
        _sqlite_tuning(engine, busy_timeout_ms=seconds * 1000)
        return engine
    args = {
        "connect_timeout": seconds,
        "init_command": f"SET SESSION innodb_lock_wait_timeout = {seconds}",
    }
    return create_async_engine(url, connect_args=args, poolclass=NullPool)


def _sqlite_tuning(engine: AsyncEngine, busy_timeout_ms: int = 30000) -> None:
    """Serialise writers with BEGIN IMMEDIATE so a claim's read-then-update is atomic
    across processes, and let readers (`cronloop status`) run beside a writer (WAL)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return  # a read that must not take (or keep) the write lock: the store's probe
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """The factory tasks get as `ctx.db`."""
    return async_sessionmaker(engine, expire_on_commit=False)


def is_sqlite(dialect: Dialect) -> bool:
    return dialect.name == "sqlite"


def db_now(dialect: Dialect, plus_s: float = 0.0) -> ColumnElement[Any]:
    """The database server's current UTC time (+ `plus_s`), as a SQL expression.

    Leases are computed and compared with this, never with a worker's wall clock, so two
    hosts whose clocks disagree still agree on who owns a run.
    """
    if is_sqlite(dialect):
        modifier = f"{plus_s:+.6f} seconds"
        # %f gives milliseconds; pad to the microsecond text SQLAlchemy writes, so string
        # comparison with stored values stays correct.
        expr = func.strftime("%Y-%m-%d %H:%M:%f", "now", modifier).concat("000")
        return type_coerce(expr, UTCDateTime())
    now = func.utc_timestamp(literal_column("6"))
    if plus_s:
        now = func.timestampadd(literal_column("MICROSECOND"), int(plus_s * 1_000_000), now)
    return type_coerce(now, UTCDateTime())


async def server_supports_skip_locked(engine: AsyncEngine) -> bool:
    """MariaDB >= 10.6 and MySQL >= 8.0 have SKIP LOCKED; older ones get plain claims."""
    if is_sqlite(engine.dialect):
        return False
    async with engine.connect() as conn:
        version = str((await conn.exec_driver_sql("SELECT VERSION()")).scalar_one())
    return skip_locked_in(version)


def skip_locked_in(version: str) -> bool:
    """Whether a server of this `SELECT VERSION()` has SKIP LOCKED (MariaDB >= 10.6,
    MySQL >= 8.0)."""
    numbers = tuple(int(p) for p in version.split("-")[0].split(".")[:2] if p.isdigit())
    return numbers >= ((10, 6) if "mariadb" in version.lower() else (8, 0))
