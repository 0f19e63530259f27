"""The plugin seam: what a package adds to cronloop, and how cronloop finds it.

A package exposes one `Plugin` object through the entry-point group ``cronloop.plugins``
(pyproject: ``standard = "cronloop.standard.plugin:plugin"``). A plugin contributes task
modules (imported by discovery, the same path as the ``task_modules`` setting), CLI
subcommands (`Command`), an Alembic folder of revisions (its own branch) and the
SQLAlchemy metadata its tables live in. Everything is named by import string and
imported only when asked for, so loading a plugin costs one small module import.

A plugin that fails to load is a configuration error naming it and its entry point. The
older group ``cronloop.tasks`` (an entry point naming a task module, nothing else) is
still read by discovery for task-only packages.

This module never knows the CLI's parser, the database driver or the loop: a command's
handler gets a `CommandContext` that the CLI fills in.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, TextIO

from cronloop.config.settings import ConfigError, Settings

__all__ = [
    "PLUGIN_GROUP",
    "Command",
    "CommandContext",
    "CommandError",
    "Plugin",
    "PluginDatabase",
    "commands_of",
    "load_plugins",
    "migration_folders",
    "plugin_metadata",
]

PLUGIN_GROUP = "cronloop.plugins"


class CommandError(Exception):
    """Stop a plugin command with `exit_code` (see `cronloop.exitcodes`) and a message
    for the operator (never a secret)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class PluginDatabase(Protocol):
    """The database a command gets: connected, schema current."""

    @property
    def engine(self) -> Any: ...  # an AsyncEngine

    @property
    def sessions(self) -> Any: ...  # an async_sessionmaker[AsyncSession]


@dataclass(frozen=True)
class CommandContext:
    """What a plugin command's handler receives.

    ``database()`` is an async context manager opening the configured database (waiting
    for it at start, as every command does); ``database_url()`` the URL to connect to, the
    password kept inside the URL object; ``task_options(name)`` a task's resolved options,
    or None when no loaded task has that name.
    """

    args: argparse.Namespace
    settings: Settings
    out: TextIO
    database: Callable[[], AbstractAsyncContextManager[PluginDatabase]]
    database_url: Callable[[], Any]
    task_options: Callable[[str], Mapping[str, Any] | None]

    def print(self, text: str) -> None:
        print(text, file=self.out)


Handler = Callable[[CommandContext], "int | Awaitable[int]"]


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    return None


@dataclass(frozen=True)
class Command:
    """A ``cronloop NAME`` subcommand: ``add_arguments(parser)`` declares its arguments,
    ``handler(ctx)`` (sync or async) runs it and returns the exit code."""

    name: str
    help: str
    handler: Handler
    add_arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


@dataclass(frozen=True)
class Plugin:
    """What one package adds. ``migrations``: the import name of a package whose folder
    holds the plugin's Alembic revisions (one branch of its own); ``metadata``:
    ``"module:attribute"`` naming the MetaData its tables are in (read by migrations after
    the task modules are imported, which define the tables)."""

    name: str
    task_modules: tuple[str, ...] = ()
    commands: tuple[Command, ...] = ()
    migrations: str | None = None
    metadata: str | None = None
    source: str = field(default="", compare=False)  # where it was loaded from, for errors

    def where(self) -> str:
        return self.source or f"plugin {self.name!r}"


def load_plugins(group: str = PLUGIN_GROUP) -> list[Plugin]:
    """The plugins installed in ``group``, in entry-point name order; a plugin that does
    not import, or is not a `Plugin`, is a ConfigError naming it."""
    found: list[Plugin] = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        where = f"plugin {ep.name!r} (entry point {ep.value!r} in group {group})"
        try:
            loaded = ep.load()
        except Exception as exc:
            raise ConfigError(f"cannot load {where}: {exc!r}") from exc
        if not isinstance(loaded, Plugin):
            raise ConfigError(f"{where} is a {type(loaded).__name__}, not a cronloop Plugin")
        found.append(dataclasses.replace(loaded, source=where))
    return found


def migration_folders(plugins: Iterable[Plugin]) -> list[str]:
    """The folders holding each plugin's revisions (plugins without migrations skipped)."""
    folders: list[str] = []
    for plugin in plugins:
        if plugin.migrations:
            module = _import(plugin.migrations, plugin)
            folders.append(str(Path(str(module.__file__)).parent))
    return folders


def plugin_metadata(plugins: Iterable[Plugin]) -> list[Any]:
    """Each plugin's MetaData, its task modules imported first (they define the tables)."""
    result: list[Any] = []
    for plugin in plugins:
        if not plugin.metadata:
            continue
        for module in plugin.task_modules:
            _import(module, plugin)
        module_name, _, attribute = plugin.metadata.partition(":")
        try:
            result.append(getattr(_import(module_name, plugin), attribute))
        except AttributeError:
            raise ConfigError(
                f"{plugin.where()}: metadata {plugin.metadata!r} names no attribute"
            ) from None
    return result


def _import(module: str, plugin: Plugin) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise ConfigError(f"{plugin.where()}: cannot import {module!r}: {exc!r}") from exc


def commands_of(plugins: Iterable[Plugin], reserved: Iterable[str]) -> Mapping[str, Command]:
    """Every plugin command by name; a name the core or another plugin already uses is a
    ConfigError naming both."""
    taken = {name: "the core" for name in reserved}
    chosen: dict[str, Command] = {}
    for plugin in plugins:
        for command in plugin.commands:
            if command.name in taken:
                raise ConfigError(
                    f"{plugin.where()}: command {command.name!r} is already defined by "
                    f"{taken[command.name]}"
                )
            taken[command.name] = plugin.where()
            chosen[command.name] = command
    return chosen
