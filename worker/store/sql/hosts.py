"""Several database hosts in order of preference (`database_hosts`): which one a new
connection goes to, moving on when one dies or is unusable, and back to a preferred one.

Hooked into an engine's pool (SQLAlchemy's `do_connect`, `checkout` and `handle_error`
events), so nothing above the engine knows there is more than one server:

- a new connection tries the hosts in order, skipping those marked down for a while,
  and keeps the first that answers and is ready (a Galera node outside the primary
  component says `wsrep_ready = OFF`); if every host is marked down, all are tried;
- an error that means "this node cannot serve" (`errors.node_unusable`: the wsrep 1047,
  a server shutting down, read-only) marks its host down and counts as a disconnect,
  so SQLAlchemy throws the whole pool away and the next connections go elsewhere;
- a pooled connection to a less preferred host is dropped at check-out once a more
  preferred one may be back (its mark expired), so the workers return to it.

It never retries a statement (the caller's error policy does) and never knows what the
connections are used for.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop.store.sql.errors import node_unusable

log = structlog.get_logger("cronloop.database")

DOWN_S = 5.0  # a host that failed is skipped this long before it is tried again
HOST_CONNECT_TIMEOUT_S = 3  # per host: a dead node must not hold up the next one
FAILBACK_AFTER_S = 5.0  # a connection to a less preferred host lives at least this long


@dataclass(frozen=True)
class Host:
    name: str
    port: int | None

    @property
    def label(self) -> str:
        return f"{self.name}:{self.port}" if self.port else self.name


def parse_host(text: str) -> Host:
    """`host`, `host:port` or `[v6]:port` (checked by the settings' parser)."""
    if text.startswith("["):
        name, _, rest = text[1:].partition("]")
        return Host(name, int(rest[1:]) if rest.startswith(":") else None)
    name, _, port = text.partition(":")
    return Host(name, int(port) if port else None)


@dataclass
class HostList:
    """The hosts in order of preference, and until when each is marked down."""

    hosts: Sequence[Host]
    clock: Callable[[], float] = time.monotonic
    down_until: dict[Host, float] = field(default_factory=dict)
    current: Host | None = None  # where the last new connection went

    def order(self) -> list[Host]:
        """The hosts to try: those not marked down, in preference order, then the rest."""
        now = self.clock()
        up = [h for h in self.hosts if self.down_until.get(h, 0.0) <= now]
        return up + [h for h in self.hosts if h not in up]

    def mark_down(self, host: Host, why: str) -> None:
        if self.down_until.get(host, 0.0) <= self.clock():
            log.warning("database host unusable; moving to the next", host=host.label, error=why)
        self.down_until[host] = self.clock() + DOWN_S

    def connected(self, host: Host) -> None:
        if host != self.current:
            log.info("connected to database host", host=host.label, rank=self.rank(host))
        self.current = host
        self.down_until.pop(host, None)

    def rank(self, host: Host) -> int:
        return list(self.hosts).index(host)

    def better_than(self, host: Host) -> bool:
        """Whether a more preferred host than `host` is not marked down."""
        now = self.clock()
        return any(self.down_until.get(h, 0.0) <= now for h in self.hosts[: self.rank(host)])


_ATTACHED: weakref.WeakKeyDictionary[Any, HostList] = weakref.WeakKeyDictionary()


def hosts_of(engine: AsyncEngine) -> HostList | None:
    """The host list an engine follows (None: one host), for status and tests."""
    return _ATTACHED.get(engine.sync_engine)


def attach_failover(engine: AsyncEngine, hosts: HostList) -> None:
    """Make `engine`'s new connections follow `hosts` (see the module docstring)."""
    sync = engine.sync_engine
    _ATTACHED[sync] = hosts

    @event.listens_for(sync, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        last: BaseException | None = None
        for host in hosts.order():
            params = {**cparams, "host": host.name, "connect_timeout": HOST_CONNECT_TIMEOUT_S}
            if host.port:
                params["port"] = host.port
            try:
                conn = dialect.connect(*cargs, **params)
            except BaseException as exc:
                # a caller's timeout cancelling a connect to a silent host marks it too,
                # or the next attempt would wait on the same host again
                hosts.mark_down(host, _short(exc))
                if not isinstance(exc, Exception):
                    raise
                last = exc
                continue
            why = _not_ready(conn)
            if why is not None:
                hosts.mark_down(host, why)
                conn.close()
                continue
            record.info["db_host"] = host
            record.info["connected_mono"] = hosts.clock()
            hosts.connected(host)
            return conn
        if last is not None:
            raise last
        raise sa_exc.DisconnectionError("no database host is ready: " + _labels(hosts))

    @event.listens_for(sync, "checkout")
    def _checkout(_dbapi: Any, record: Any, _proxy: Any) -> None:
        host = record.info.get("db_host")
        if host is None or hosts.rank(host) == 0:
            return
        young = hosts.clock() - record.info.get("connected_mono", 0.0) < FAILBACK_AFTER_S
        if not young and hosts.better_than(host):
            raise sa_exc.DisconnectionError("a preferred database host may be back")

    @event.listens_for(sync, "handle_error")
    def _error(ctx: ExceptionContext) -> None:
        if not node_unusable(ctx.original_exception):
            return
        host = _host_of(ctx)
        if host is not None:
            hosts.mark_down(host, _short(ctx.original_exception))
        ctx.is_disconnect = True  # the pool is thrown away: its connections go to that node


def _not_ready(conn: Any) -> str | None:
    """Why a new connection's node cannot serve (None: it can): with Galera on
    (`wsrep_on`), its `wsrep_ready`; a server without Galera is ready."""
    try:
        cursor = conn.cursor()
        try:
            cursor.execute("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
            row = cursor.fetchone()
            if row is None or str(row[1]).upper() != "ON":
                return None
            cursor.execute("SHOW GLOBAL STATUS LIKE 'wsrep_ready'")
            row = cursor.fetchone()
        finally:
            cursor.close()
    except Exception as exc:
        return _short(exc)
    if row is not None and str(row[1]).upper() == "ON":
        return None
    return "wsrep_ready = OFF (not in the primary component)"


def _host_of(ctx: ExceptionContext) -> Host | None:
    try:
        info = ctx.connection.connection.info if ctx.connection is not None else {}
    except Exception:  # the connection is already gone
        return None
    host = info.get("db_host")
    return host if isinstance(host, Host) else None


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _labels(hosts: HostList) -> str:
    return ", ".join(h.label for h in hosts.hosts)


def host_list(url: URL, names: Sequence[str]) -> HostList:
    """The hosts of `database_hosts`, each with the URL's port where it names none."""
    parsed = [parse_host(n) for n in names]
    return HostList([Host(h.name, h.port or url.port) for h in parsed])
