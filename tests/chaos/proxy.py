"""A TCP proxy between the workers and MariaDB, to break the database on purpose.

The shared MariaDB server must not be stopped (other people use it), so the chaos tests
put this proxy on 127.0.0.1:<free port> in front of it and break the proxy instead:

- `cut()`: close the listener and reset every connection, as a stopped server does
  (clients get ECONNRESET, new connections ECONNREFUSED) until `restore()`;
- `blackhole()`: a network partition: connections stay open but every byte is dropped
  in both directions, new connections are accepted and never answered, until `heal()`
  (the old connections stay dead, as after a real partition);
- `flaky(p)`: each chunk of data, in either direction, has probability `p` of resetting
  its connection instead of being forwarded: a connection dropped mid-query.

It runs its own asyncio loop in a daemon thread; the methods are thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ProxyStats:
    connections: int = 0
    resets: int = 0  # connections reset by cut() or flaky()
    dropped_bytes: int = 0


@dataclass(eq=False)  # identity: pairs live in a set
class _Pair:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    dead: bool = False  # blackholed: never forward again

    def abort(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                writer.transport.abort()


@dataclass
class TcpProxy:
    target_host: str
    target_port: int
    seed: int = 1234
    stats: ProxyStats = field(default_factory=ProxyStats)

    def __post_init__(self) -> None:
        self.port = _free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="chaos-proxy", daemon=True
        )
        self._server: asyncio.Server | None = None
        self._pairs: set[_Pair] = set()
        self._holes = False
        self._p_reset = 0.0
        self._random = random.Random(self.seed)

    # -- control, from the test's thread ----------------------------------------------------

    def start(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def cut(self) -> None:
        """The database is gone: listener closed, every connection reset."""
        self._call(self._cut())

    def restore(self) -> None:
        self._call(self._listen())

    def blackhole(self) -> None:
        """A partition: nothing gets through, nothing is refused either."""
        self._call(self._set_holes(True))

    def heal(self) -> None:
        self._call(self._set_holes(False))

    def flaky(self, p_reset: float) -> None:
        self._p_reset = p_reset

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- the loop's side ----------------------------------------------------------------

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for pair in list(self._pairs):
            pair.abort()
            self.stats.resets += 1
        self._pairs.clear()
        if server is not None:
            # after the aborts: since 3.12 wait_closed waits for every connection to end
            await server.wait_closed()

    async def _set_holes(self, on: bool) -> None:
        self._holes = on
        if on:
            for pair in self._pairs:
                pair.dead = True

    async def _shutdown(self) -> None:
        await self._cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        pair = _Pair(writer, dead=self._holes)
        self._pairs.add(pair)
        try:
            if pair.dead:
                await self._swallow(reader, pair)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
            except OSError:
                pair.abort()
                return
            pair.server = up_writer
            await asyncio.gather(
                self._pump(reader, up_writer, pair), self._pump(up_reader, writer, pair)
            )
        finally:
            self._pairs.discard(pair)
            pair.abort()

    async def _swallow(self, reader: asyncio.StreamReader, pair: _Pair) -> None:
        while data := await reader.read(65536):
            self.stats.dropped_bytes += len(data)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pair: _Pair
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if pair.dead:
                    self.stats.dropped_bytes += len(data)
                    continue
                if self._p_reset and self._random.random() < self._p_reset:
                    self.stats.resets += 1
                    pair.abort()
                    return
                writer.write(data)
                await writer.drain()
        pair.abort()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
