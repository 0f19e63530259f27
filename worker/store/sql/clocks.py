"""How far the database servers' clocks are from this host's, and from each other's.

Leases are stamped with the clock of the node a worker talks to and read with the clock
of the node another worker talks to, so on a Galera cluster the nodes' clocks must agree
within `max_clock_skew_s`. This module measures that: each node the cluster names in
`wsrep_incoming_addresses` (or the one server) is asked for `UTC_TIMESTAMP(6)` between two
readings of the local clock, which bounds its offset from this host's clock without
trusting either. It only measures and describes; whether to refuse a start is the
caller's. It never knows about leases or workers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

SAMPLES = 3  # the tightest of a few readings: the first one pays for a cold connection
READ_TIMEOUT_S = 3.0  # one node: connect and read, at most


@dataclass(frozen=True)
class NodeClock:
    """A node's clock minus this host's clock lies within [`low_s`, `high_s`]."""

    address: str
    low_s: float
    high_s: float

    @property
    def offset_s(self) -> float:
        return (self.low_s + self.high_s) / 2


@dataclass(frozen=True)
class ClockReport:
    """The clocks read (the server a worker uses first), and the nodes that could not be."""

    nodes: tuple[NodeClock, ...]
    unreadable: dict[str, str] = field(default_factory=dict)

    def skew_at_least_s(self) -> float:
        """A lower bound of the largest disagreement between two nodes (0 for one node):
        measurement noise can only make it smaller, never raise a false alarm."""
        if len(self.nodes) < 2:
            return 0.0
        return max(0.0, max(n.low_s for n in self.nodes) - min(n.high_s for n in self.nodes))

    def skew_at_most_s(self) -> float:
        """An upper bound of the largest disagreement between two nodes."""
        if len(self.nodes) < 2:
            return 0.0
        return max(n.high_s for n in self.nodes) - min(n.low_s for n in self.nodes)

    def extremes(self) -> tuple[NodeClock, NodeClock]:
        """The node furthest behind and the one furthest ahead."""
        ordered = sorted(self.nodes, key=lambda n: n.offset_s)
        return ordered[0], ordered[-1]

    def local_offset_at_least_s(self) -> float:
        """A lower bound of how far this host's clock is from the first node's."""
        first = self.nodes[0]
        return max(0.0, first.low_s, -first.high_s)


def describe_skew(report: ClockReport, max_skew_s: float) -> str | None:
    """Why a worker must not start on these clocks (None: they agree well enough)."""
    skew = report.skew_at_least_s()
    if skew <= max_skew_s:
        return None
    behind, ahead = report.extremes()
    return (
        f"the clocks of database nodes {behind.address} and {ahead.address} differ by at "
        f"least {skew:.3f} s, more than max_clock_skew_s = {max_skew_s:g} s: a lease stamped "
        "by one node could be taken over by a worker on the other while its owner still "
        "runs it. Fix the nodes' time (NTP), or raise max_clock_skew_s above the skew "
        "(a crashed worker's runs are then taken over after lease_s + max_clock_skew_s)"
    )


async def read_clock(
    conn: AsyncConnection, address: str, local: Callable[[], float] = time.time
) -> NodeClock:
    """Bound the server's clock offset by reading it between two local readings."""
    low, high = -float("inf"), float("inf")
    for _ in range(SAMPLES):
        before = local()
        value = (await conn.exec_driver_sql("SELECT UTC_TIMESTAMP(6)")).scalar_one()
        after = local()
        server = value.replace(tzinfo=UTC).timestamp()
        if after - before < high - low:
            low, high = server - after, server - before
    return NodeClock(address, low, high)


async def cluster_addresses(conn: AsyncConnection) -> list[str]:
    """The SQL addresses of the cluster's members (`host:port`), [] without Galera."""
    sql = "SHOW GLOBAL STATUS LIKE 'wsrep_incoming_addresses'"
    row = (await conn.exec_driver_sql(sql)).first()
    if row is None:
        return []
    text = str(tuple(row)[1] or "")
    return [a.strip() for a in text.split(",") if a.strip() and a.strip().upper() != "AUTO"]


async def measure_clocks(
    engine: AsyncEngine, local: Callable[[], float] = time.time
) -> ClockReport:
    """The clock of the server `engine` reaches, then of every other cluster member it
    names; a member that cannot be read (down, unreachable from here, not ready) is
    listed in `unreadable`, not an error."""
    address = f"{engine.url.host}:{engine.url.port or 3306}"
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        # with several hosts (`store.sql.hosts`) the one this connection reached
        address = getattr(raw.info.get("db_host"), "label", None) or address
        first = await read_clock(conn, address, local)
        members = await cluster_addresses(conn)
    nodes = [first]
    unreadable: dict[str, str] = {}
    for member in members:
        if member == address:
            continue
        try:
            nodes.append(
                await asyncio.wait_for(_read_member(engine.url, member, local), READ_TIMEOUT_S)
            )
        except Exception as exc:  # reported by the caller as a warning, never fatal
            unreadable[member] = type(exc).__name__ if not str(exc) else str(exc)[:200]
    return ClockReport(tuple(nodes), unreadable)


async def _read_member(url: URL, member: str, local: Callable[[], float]) -> NodeClock:
    host, _, port = member.rpartition(":")
    target = url.set(host=host.strip("[]"), port=int(port))
    args = {"connect_timeout": int(READ_TIMEOUT_S)}
    engine = create_async_engine(target, poolclass=NullPool, connect_args=args)
    try:
        async with engine.connect() as conn:
            return await read_clock(conn, member, local)
    finally:
        await engine.dispose()
