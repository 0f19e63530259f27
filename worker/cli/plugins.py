"""Plugin commands on the command line: their subparsers, and the context they run in.

The core's own commands are in `cronloop.cli.admin`; this module adds each loaded
plugin's `Command` as a subcommand and runs it with a `CommandContext` (settings, the
database, the tasks' options, output). It never knows any particular plugin.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from cronloop.cli.bootstrap import Database, check_user, load_registry, open_database
from cronloop.config.settings import Settings
from cronloop.definitions.plugin import Command, CommandContext
from cronloop.store.sql.engine import resolve_url


def add_subparsers(sub: Any, commands: Mapping[str, Command]) -> None:
    """One subparser per plugin command (`sub`: the parser's `add_subparsers()`)."""
    for command in commands.values():
        command.add_arguments(sub.add_parser(command.name, help=command.help))


def command_context(args: argparse.Namespace, settings: Settings) -> CommandContext:
    @asynccontextmanager
    async def database() -> AsyncIterator[Database]:
        db = await open_database(settings, wait=True)
        try:
            yield db
        finally:
            await db.close()

    def task_options(name: str) -> Mapping[str, Any] | None:
        registry = load_registry(settings)
        return registry[name].options if name in registry else None

    return CommandContext(
        args=args,
        settings=settings,
        out=sys.stdout,
        database=database,
        database_url=lambda: resolve_url(settings),
        task_options=task_options,
    )


async def run_command(command: Command, args: argparse.Namespace, settings: Settings) -> int:
    """Run a plugin command as the service user would (never as root unless allowed)."""
    check_user(settings)
    result = command.handler(command_context(args, settings))
    if inspect.isawaitable(result):
        result = await result
    return int(result)
