"""Several database hosts (`database_hosts`, `store.sql.hosts`) against a real MariaDB.

The preferred "host" is a TCP relay to the real server that the test opens and closes
(a node that dies and comes back, at the TCP level); the second is the server itself.
The host list's clock is injected, so the "host marked down for a while" and "back to
the preferred one" rules are checked without waiting. What only a real cluster can show
(a node outside the primary component answering 1047) is in `tests/galera/`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pymysql.err  # type: ignore[import-untyped]
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from cronloop.config.model import Settings
from cronloop.config.settings import ConfigError
from cronloop.store.sql.engine import create_engine, resolve_url
from cronloop.store.sql.errors import ErrorKind, classify, node_unusable
from cronloop.store.sql.hosts import DOWN_S, FAILBACK_AFTER_S, hosts_of


@dataclass
class Relay:
    """127.0.0.1:`port` relayed to the real server while open; `close()` kills it and
    every connection through it, as a dead node."""

    target: tuple[str, int]
    port: int = 0
    accepted: int = 0
    server: asyncio.Server | None = None
    pipes: set[asyncio.StreamWriter] = field(default_factory=set)

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.close()
        for writer in list(self.pipes):
            writer.transport.abort()
        if server is not None:
            # after the aborts: since 3.12 wait_closed waits for every connection to end
            await asyncio.wait_for(server.wait_closed(), 10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.pipes |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


class FakeMono:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def relay(mariadb_database: str) -> AsyncIterator[Relay]:
    url = make_url(mariadb_database)
    r = Relay((url.host or "127.0.0.1", url.port or 3306))
    await r.open()
    try:
        yield r
    finally:
        await r.close()


def two_hosts(mariadb_database: str, relay: Relay) -> tuple[AsyncEngine, FakeMono]:
    url = make_url(mariadb_database)
    real = f"{url.host}:{url.port or 3306}"
    settings = Settings(
        database_url=mariadb_database, database_hosts=(f"127.0.0.1:{relay.port}", real)
    )
    engine = create_engine(settings)
    hosts = hosts_of(engine)
    assert hosts is not None
    clock = FakeMono()
    hosts.clock = clock
    return engine, clock


async def select_1(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.exec_driver_sql("SELECT 1")).scalar_one())


async def select_1_retried(engine: AsyncEngine) -> int:
    """As the worker's error policy would: one failure on a connection that died is an
    outage, the next attempt gets a new connection."""
    try:
        return await select_1(engine)
    except sa_exc.DBAPIError as exc:
        assert classify(exc) is ErrorKind.OUTAGE
        return await select_1(engine)


@pytest.mark.mariadb
async def test_the_preferred_host_first_then_the_next_when_it_dies_then_back(
    mariadb_database: str, relay: Relay
) -> None:
    engine, clock = two_hosts(mariadb_database, relay)
    hosts = hosts_of(engine)
    assert hosts is not None
    try:
        assert await select_1(engine) == 1
        assert relay.accepted == 1 and hosts.current == hosts.hosts[0]
        await relay.close()  # the preferred node dies
        assert await select_1_retried(engine) == 1
        assert hosts.current == hosts.hosts[1]
        clock.now += FAILBACK_AFTER_S + 1  # still marked down: the second host is kept
        assert await select_1(engine) == 1
        assert hosts.current == hosts.hosts[1] and relay.accepted == 1
        await relay.open()  # back, on the same port
        clock.now += DOWN_S + 1  # its mark expired: the next check-out moves back
        assert await select_1(engine) == 1
        assert hosts.current == hosts.hosts[0] and relay.accepted == 2
    finally:
        await engine.dispose()


@pytest.mark.mariadb
async def test_a_dead_preferred_host_at_start_costs_one_refused_connect(
    mariadb_database: str, relay: Relay
) -> None:
    await relay.close()
    engine, _ = two_hosts(mariadb_database, relay)
    try:
        assert await select_1(engine) == 1
        hosts = hosts_of(engine)
        assert hosts is not None and hosts.current == hosts.hosts[1]
        assert hosts.order() == [hosts.hosts[1], hosts.hosts[0]]  # marked down a while
    finally:
        await engine.dispose()


@pytest.mark.mariadb
async def test_a_silent_host_cut_short_by_the_callers_timeout_is_skipped_next_time(
    mariadb_database: str,
) -> None:
    """A node that accepts TCP but never answers (hung, half-dead): the caller's bound on
    the call cancels the connect before its own timeout; the host is skipped next."""
    held: list[asyncio.StreamWriter] = []

    async def mute(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # no handshake, ever

    silent = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    url = make_url(mariadb_database)
    hosts_setting = (f"127.0.0.1:{port}", f"{url.host}:{url.port or 3306}")
    engine = create_engine(Settings(database_url=mariadb_database, database_hosts=hosts_setting))
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(select_1(engine), 0.5)
        assert await asyncio.wait_for(select_1(engine), 5.0) == 1
        hosts = hosts_of(engine)
        assert hosts is not None and hosts.current == hosts.hosts[1]
    finally:
        await engine.dispose()
        silent.close()
        for writer in held:
            writer.transport.abort()


def test_one_host_has_no_failover_and_the_url_takes_the_first_host() -> None:
    settings = Settings(
        database_url="mysql://u@ignored:1/db", database_hosts=("n1:3307", "n2", "[::1]:3308")
    )
    url = resolve_url(settings)
    assert (url.host, url.port) == ("n1", 3307)
    one = create_engine(Settings(database_url="mysql://u@db/x"))
    assert hosts_of(one) is None


def test_database_hosts_need_a_server_database() -> None:
    with pytest.raises(ConfigError, match="database_hosts: only for MySQL/MariaDB"):
        resolve_url(Settings(database_url="sqlite:////tmp/x.db", database_hosts=("a", "b")))


def test_a_node_outside_the_primary_component_is_unusable_and_an_outage() -> None:
    wsrep = pymysql.err.OperationalError(
        1047, "WSREP has not yet prepared node for application use"
    )
    wrapped = sa_exc.OperationalError("SELECT 1", {}, wsrep)
    assert node_unusable(wrapped) and classify(wrapped) is ErrorKind.OUTAGE
    non_primary = pymysql.err.OperationalError(
        1180, "Error while appending ... (provider status: Not connected to Primary Component)"
    )
    assert node_unusable(sa_exc.OperationalError("COMMIT", {}, non_primary))
    disk = pymysql.err.OperationalError(1180, "Got error 28 during COMMIT")
    assert not node_unusable(sa_exc.OperationalError("COMMIT", {}, disk))
    assert classify(sa_exc.OperationalError("COMMIT", {}, disk)) is ErrorKind.OUTAGE
    conflict = sa_exc.OperationalError("COMMIT", {}, pymysql.err.OperationalError(1213, "Deadlock"))
    assert not node_unusable(conflict)
