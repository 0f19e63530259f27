"""`cronloop run`: the service itself, wired to systemd.

Builds the registry, waits for and migrates the database, synchronises the task table,
then hands over to the supervisor with systemd notifications and a SIGHUP reloader.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
from collections.abc import Callable, Sequence
from types import CodeType
from typing import TYPE_CHECKING, NoReturn

import structlog
from sqlalchemy.engine import URL

from cronloop import __version__
from cronloop.cli.bootstrap import Database, check_clocks, check_user, open_database, sync
from cronloop.config.reload import reload_settings, report
from cronloop.config.settings import Settings, load_settings
from cronloop.definitions.discovery import discover_jobs
from cronloop.definitions.registry import Registry, build_registry, discover
from cronloop.domain.clock import SystemClock
from cronloop.runtime.recording import RECORD_WINDOW_S
from cronloop.runtime.runner import RunEnvironment
from cronloop.runtime.supervisor import Hooks, Supervisor
from cronloop.runtime.watchdog import LoopWatchdog, strike_recorder
from cronloop.store.sql.migrate import schema_state
from cronloop.store.sql.store import short_lived_store
from cronloop.systemd import logs
from cronloop.systemd.notify import Notifier

if TYPE_CHECKING:
    from cronloop.web.server import WebServer

log = structlog.get_logger("cronloop.cli")


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    check_user(settings)
    if settings.http_listen:
        # the web server (aiohttp) is imported only when it is on: a third of start-up
        from cronloop.web.server import check_listen

        check_listen(settings)  # before waiting for the database: a refusal is quick
    definitions = discover(settings.task_modules)
    job_definitions = discover_jobs(settings.task_modules)
    registry = build_registry(settings, definitions, job_definitions)  # a bad setting stops here
    # the first line of every run: which version a report came from
    log.info("cronloop starting", version=__version__, python=platform.python_version())
    notifier = Notifier()
    clock = SystemClock()
    # waiting for the database and migrating may outlast TimeoutStartSec
    notifier.extend_timeout(settings.startup_db_wait_s + 120)
    db = await open_database(settings, wait=True, create=True)
    # its thread pool follows max_concurrency, its retry policy retry_max/retry_delay_s
    env = RunEnvironment(
        store=db.store,
        settings=settings,
        clock=clock,
        db=db.sessions,
        record_window_s=RECORD_WINDOW_S,
    )
    try:
        await check_clocks(db.engine, settings)
        await sync(db, registry, clock)

        async def reloader(current: Settings) -> tuple[Settings, Registry] | None:
            def load() -> Settings:
                return load_settings(param_file=args.param_file_, overrides=args.overrides_)

            result = reload_settings(current, load, definitions, job_definitions)
            if result is None:
                return None
            logs.configure(result.settings.log_level, current.log_format)
            await sync(db, result.registry, clock)
            report(result, result.registry.names())
            return result.settings, result.registry

        watchdog = _loop_watchdog(settings, registry, db.engine.url, lambda: running())
        supervisor = Supervisor(
            registry,
            env,
            once=args.once,
            hooks=_systemd_hooks(notifier, clock, lambda: _drain_s(env.settings)),
            reloader=reloader,
            side_loops=[("watchdog heartbeat", watchdog.beat)],
        )

        def running() -> tuple[str, ...]:
            return supervisor.running_names

        server = await _web_server(settings, db, env, supervisor, watchdog)
        supervisor.install_signal_handlers()
        watchdog.start()
        try:
            code = await supervisor.run()
        finally:
            watchdog.stop()
            if server is not None:
                await server.stop()  # closed with the side loops already, unless start failed
        if supervisor.stragglers:
            _exit_now(code)  # a stuck thread would hold up a normal interpreter exit forever
        return code
    finally:
        env.close()
        notifier.close()
        await db.close()


async def _web_server(
    settings: Settings, db: Database, env: RunEnvironment, sup: Supervisor, dog: LoopWatchdog
) -> WebServer | None:
    """The HTTP server when `http_listen` is set: bound now, refreshed as a side loop,
    fed the runs' events; None when it is off."""
    if not settings.http_listen:
        return None
    from cronloop.web.server import WebServer
    from cronloop.web.view import WorkerView

    def wake() -> None:
        sup.tasks.due.forget()
        sup.wake_event.set()

    async def schema_current() -> bool:
        return (await schema_state(db.engine)).is_current

    view = WorkerView(
        store=db.store,
        health=env.health,
        clock=env.clock,
        running=lambda: sup.running_names,
        periods=lambda: {s.name: s.schedule.period_s() for s in sup.registry if s.schedule},
        leases_lost=lambda: sup.leases.lost_total,
        draining=sup.stop_event.is_set,
        heartbeat_age_s=dog.beat_age_s,
        heartbeat_limit_s=settings.watchdog_s,
        schema_current=schema_current,
        sessions=db.sessions,
        wake=wake,
    )
    server = WebServer(settings, view)
    await server.start()
    env.events = server.metrics
    sup.side_loops.append(("http server", server.run))
    return server


def _loop_watchdog(
    settings: Settings, registry: Registry, url: URL, running: Callable[[], Sequence[str]]
) -> LoopWatchdog:
    """A thread that exits 70 when the loop stalls for `watchdog_s`, striking the task
    that blocked it (quarantined after `quarantine_strikes`). A job that blocked it is
    told from the tasks beside it by its code too, so they are not struck for it; its
    own strike is counted when another worker takes its attempt over (the job queue's
    rule, `store.sql.queue`)."""

    def code_of(name: str) -> CodeType | None:
        spec = registry.specs.get(name) or registry.jobs.get(name)
        return getattr(spec.func, "__code__", None) if spec else None

    record = strike_recorder(functools.partial(short_lived_store, url), settings.quarantine_strikes)

    def on_stall(names: list[str], stalled_s: float) -> None:
        tasks = [n for n in names if n in registry.specs]
        if tasks:
            record(tasks, stalled_s)

    return LoopWatchdog(
        settings.watchdog_s, running_tasks=running, on_stall=on_stall, code_of=code_of
    )


def _exit_now(code: int) -> NoReturn:
    """End the process without joining threads: the only way to stop a stuck thread."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _drain_s(settings: Settings) -> float:
    """How long a drain may take, with the settings in force (a reload may change them)."""
    return settings.shutdown_grace + settings.grace_s + 15


def _systemd_hooks(notifier: Notifier, clock: SystemClock, drain_s: Callable[[], float]) -> Hooks:
    interval = notifier.watchdog_interval_s
    last_ping = [0.0]

    def tick() -> None:
        if interval and clock.monotonic() - last_ping[0] >= interval:
            notifier.watchdog()
            last_ping[0] = clock.monotonic()

    def ready() -> None:
        notifier.ready(f"started (cronloop {__version__})")

    def status(text: str) -> None:
        notifier.status(text)

    def stopping() -> None:
        notifier.stopping("draining")
        # a drain may outlast TimeoutStopSec's default: tell systemd how long it can take
        notifier.extend_timeout(drain_s())

    def reloading() -> None:
        notifier.reloading("reloading the configuration")

    def reloaded() -> None:
        notifier.reloaded("configuration reloaded")

    return Hooks(
        on_ready=ready,
        on_status=status,
        on_stopping=stopping,
        on_tick=tick,
        on_reloading=reloading,
        on_reloaded=reloaded,
        max_sleep_s=interval,
    )
