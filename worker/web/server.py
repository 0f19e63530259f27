"""The listener: bind `http_listen` in the worker's loop, serve until the worker stops.

`WebServer.start` binds before the worker reports ready, so a taken port or a refused
address stops the start with a configuration error naming `http_listen`. `run` is the
supervised side loop: it refreshes the task-table snapshot, and closes the listener when
it is cancelled after the drain; `stop` does that too, for a start that failed. A TCP
listener on a non-loopback address is refused unless `http_allow_insecure = 1`: cronloop
serves no TLS itself (put a TLS proxy in front) and the token would cross the network in
clear. It never knows what the routes answer.
"""

from __future__ import annotations

import os
import stat

import structlog
from aiohttp import web

from cronloop.config.listen import Listen
from cronloop.config.settings import ConfigError, Settings
from cronloop.web.app import build_app
from cronloop.web.gauges import GaugeReader, discover_sources
from cronloop.web.metrics import Metrics
from cronloop.web.table import TableReader
from cronloop.web.view import WorkerView

log = structlog.get_logger("cronloop.web")

SHUTDOWN_TIMEOUT_S = 2.0  # open requests get this long when the worker stops


def check_listen(settings: Settings) -> Listen:
    """The address to bind; ConfigError for a non-loopback TCP one without the opt-in."""
    listen = Listen.parse(settings.http_listen)
    if not listen.loopback and not settings.http_allow_insecure:
        raise ConfigError(
            f"http_listen = {listen}: not a loopback address, and cronloop serves no TLS "
            "(the token would cross the network in clear); listen on 127.0.0.1, [::1] or "
            "a unix socket behind a TLS proxy, or set http_allow_insecure = 1"
        )
    return listen


class WebServer:
    def __init__(self, settings: Settings, view: WorkerView) -> None:
        self.listen = check_listen(settings)
        self.settings = settings
        self.table = TableReader(view, GaugeReader(discover_sources(), view.sessions))
        self.metrics = Metrics(view, self.table)
        app = build_app(view, self.table, self.metrics, settings.http_token)
        self._stopped = False
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )

    async def start(self) -> None:
        """Read the table once (the first scrape has data), then bind; a failure to bind
        is a configuration error naming `http_listen`."""
        await self.table.refresh()
        self.metrics.prepare(state.name for state in self.table.snapshot.states)
        await self._runner.setup()
        site: web.BaseSite
        if self.listen.is_unix:
            _remove_stale_socket(self.listen.path)
            site = web.UnixSite(self._runner, self.listen.path)
        else:
            site = web.TCPSite(self._runner, self.listen.host, self.listen.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                f"http_listen = {self.listen}: cannot listen: {exc.strerror or exc}"
            ) from None
        log.info(
            "http server listening",
            listen=str(self.listen),
            api="read-write" if self.settings.http_token is not None else "read-only",
        )

    async def run(self) -> None:
        """The side loop: keep the task-table snapshot fresh. Cancelled with the other
        side loops once the drain is over: the listener closes then (until then /readyz
        says "draining")."""
        try:
            await self.table.run()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Close the listener (open requests get `SHUTDOWN_TIMEOUT_S`); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        await self._runner.cleanup()
        if self.listen.is_unix:
            _remove_stale_socket(self.listen.path)


def _remove_stale_socket(path: str) -> None:
    """A socket file left by a killed worker would make the bind fail."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass  # none there, or not ours to remove: the bind says what is wrong
