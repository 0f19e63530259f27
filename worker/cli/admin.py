"""The commands besides `run`: look at the table, steer tasks, maintain the database.

Each is `async def cmd_x(args, settings) -> exit code`; `cronloop.cli.main` parses the
command line and dispatches here. Commands a plugin adds (the standard tasks' `backup`,
`restore`, `demo`, `queue-email`) are in the plugin, run by `cronloop.cli.plugins`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from cronloop import __version__, exitcodes
from cronloop.cli.bootstrap import (
    check_user,
    load_registry,
    open_database,
    wait_for_database,
)
from cronloop.cli.display import history_json, history_table, status_json, status_table, tasks_table
from cronloop.cli.jobs import JOB_COMMANDS, queue_summary
from cronloop.cli.run import cmd_run
from cronloop.config.settings import Settings, describe_sources
from cronloop.domain.clock import SystemClock
from cronloop.domain.schedule import resolve_timezone
from cronloop.store.sql.claims import TriggerResult, UnknownTask
from cronloop.store.sql.engine import create_engine, database_label
from cronloop.store.sql.migrate import schema_state, upgrade

Command = Callable[[argparse.Namespace, Settings], Awaitable[int]]


async def _with_store(settings: Settings, action: Callable[[Any], Awaitable[int]]) -> int:
    check_user(settings)
    db = await open_database(settings)
    try:
        return int(await action(db.store))
    finally:
        await db.close()


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    async def show(store: Any) -> int:
        states = await store.status()
        if args.json:
            print(status_json(states))
        else:
            print(f"database: {database_label(settings)}")
            print(status_table(states, resolve_timezone(settings.timezone)))
            print(queue_summary(await store.job_counts()))
        return exitcodes.OK

    return await _with_store(settings, show)


async def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    async def show(store: Any) -> int:
        if args.name and args.name not in await store.task_names():
            raise UnknownTask(args.name)
        entries = await store.history(args.name, limit=args.limit)
        tz = resolve_timezone(settings.timezone)
        print(history_json(entries) if args.json else history_table(entries, tz))
        return exitcodes.OK

    return await _with_store(settings, show)


async def cmd_pause(args: argparse.Namespace, settings: Settings) -> int:
    async def act(store: Any) -> int:
        old = await store.pause(args.name)
        print(
            f"{args.name}: {old} -> paused"
            + (" (a run in progress finishes)" if old == "active" else "")
        )
        return exitcodes.OK

    return await _with_store(settings, act)


async def cmd_resume(args: argparse.Namespace, settings: Settings) -> int:
    async def act(store: Any) -> int:
        old = await store.resume(args.name)
        if old in ("removed", "disabled"):
            print(
                f"{args.name} is {old}: its configuration decides that, not resume", file=sys.stderr
            )
            return exitcodes.ERROR
        print(f"{args.name}: {old} -> active")
        return exitcodes.OK

    return await _with_store(settings, act)


async def cmd_trigger(args: argparse.Namespace, settings: Settings) -> int:
    async def act(store: Any) -> int:
        result = await store.trigger(args.name, SystemClock().now())
        if result == TriggerResult.NOT_ACTIVE:
            print(
                f"{args.name} is not active (see `cronloop status`); resume it first",
                file=sys.stderr,
            )
            return exitcodes.ERROR
        print(f"{args.name}: will run as soon as a worker polls (within poll_interval)")
        return exitcodes.OK

    return await _with_store(settings, act)


async def cmd_tasks(args: argparse.Namespace, settings: Settings) -> int:
    print(tasks_table(load_registry(settings)))
    return exitcodes.OK


async def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    check_user(settings)
    engine = create_engine(settings)
    try:
        await wait_for_database(engine, settings.startup_db_wait_s)
        before = await schema_state(engine)
        after = await upgrade(engine)
    finally:
        await engine.dispose()
    if before.current == after.current:
        print(f"schema already current ({after.current})")
    else:
        print(f"schema migrated: {before.current or 'empty'} -> {after.current}")
    return exitcodes.OK


async def cmd_check_config(args: argparse.Namespace, settings: Settings) -> int:
    registry = load_registry(settings)
    rows = describe_sources(settings)
    width = max(len(k) for k, _, _ in rows)
    for key, value, source in rows:
        print(f"{key.ljust(width)} = {value}    # {source}")
    files = ", ".join(settings.param_files) or "none"
    print(f"# cronloop {__version__}")
    print(f"# params files read: {files}")
    print(f"# database: {database_label(settings)}")
    print(f"# tasks: {len(registry)} ({', '.join(registry.names())})")
    return exitcodes.OK


COMMANDS: dict[str, Command] = {
    "run": cmd_run,
    "status": cmd_status,
    "history": cmd_history,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "trigger": cmd_trigger,
    "tasks": cmd_tasks,
    "migrate": cmd_migrate,
    "check-config": cmd_check_config,
    **JOB_COMMANDS,
}
