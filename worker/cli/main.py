"""The `cronloop` command: run the service, look at it, steer it.

Any setting can be given as `--key=value` (and iTop's `--param_file=F`), after the
command or before it. Exit codes are in `worker/exitcodes.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Mapping, Sequence
from typing import NoReturn

import structlog

from cronloop import __version__, exitcodes
from cronloop.cli.admin import COMMANDS
from cronloop.cli.bootstrap import ExitError, check_user
from cronloop.cli.jobs import add_parsers as add_job_parsers
from cronloop.cli.plugins import add_subparsers, run_command
from cronloop.config.params import normalize_key
from cronloop.config.settings import ConfigError, load_settings
from cronloop.config.values import holds_secret, is_secret_key
from cronloop.definitions.decorator import TaskDefinitionError
from cronloop.definitions.plugin import Command, CommandError, commands_of, load_plugins
from cronloop.store.sql.claims import UnknownTask
from cronloop.systemd import logs
from cronloop.terminal import escape_controls

log = structlog.get_logger("cronloop.cli")
COMMAND_OPTIONS = {"once", "json", "limit"}


def build_parser(plugin_commands: Mapping[str, Command] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cronloop",
        description="Run an application's background tasks from its database, under systemd.",
        epilog="Settings: --param-file FILE (iTop: --param_file=FILE), or any setting as "
        "--key=value; see `cronloop check-config`.",
    )
    parser.add_argument("--version", action="version", version=f"cronloop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run the service (until stopped, or --once)")
    run.add_argument("--once", action="store_true", help="run what is due now, then exit")
    status = sub.add_parser("status", help="every task's state and figures")
    status.add_argument("--json", action="store_true")
    history = sub.add_parser("history", help="recent runs, of one task or all")
    history.add_argument("name", nargs="?")
    history.add_argument("--limit", type=int, default=50)
    history.add_argument("--json", action="store_true")
    for verb, text in (
        ("pause", "stop scheduling a task"),
        ("resume", "schedule a paused or quarantined task again"),
        ("trigger", "run a task as soon as possible"),
    ):
        sub.add_parser(verb, help=text).add_argument("name")
    sub.add_parser("tasks", help="the tasks this installation defines")
    sub.add_parser("migrate", help="create or upgrade cronloop's tables")
    sub.add_parser("check-config", help="the effective settings and where each came from")
    add_job_parsers(sub)
    add_subparsers(sub, plugin_commands or {})  # backup, restore, demo, ...: the plugins'
    return parser


def split_argv(argv: Sequence[str]) -> tuple[list[str], str | None, dict[str, str]]:
    """Take setting flags out of argv, wherever they stand; the rest goes to argparse."""
    rest: list[str] = []
    overrides: dict[str, str] = {}
    param_file: str | None = None
    items = iter(argv)
    for token in items:
        key, eq, value = token[2:].partition("=")
        norm = normalize_key(key)  # setting names are case-insensitive everywhere
        if token in ("--param-file", "--param_file"):
            param_file = next(items, None)
            if param_file is None:
                raise ConfigError(f"{token} needs a file name")
        elif token.startswith("--") and norm == "param_file" and eq:
            param_file = value
        elif token == "--allow-root":
            overrides["allow_root"] = "1"
        elif token in ("-v", "--verbose"):
            overrides["verbose"] = "1"
        elif token.startswith("--") and eq and norm not in COMMAND_OPTIONS:
            _refuse_secret_in_argv(norm, value)
            overrides[norm] = value
        elif token.startswith("--") and is_secret_key(norm):
            _refuse_secret_in_argv(norm, "")  # `--database-password pw`: argparse would echo pw
        else:
            rest.append(token)
    return rest, param_file, overrides


def _refuse_secret_in_argv(key: str, value: str) -> None:
    """Any user can read a process's argv (`ps`); secrets belong in a file or a credential."""
    if is_secret_key(key) or holds_secret(key, value):
        raise ConfigError(
            f"--{key}: do not put a password on the command line (other users can read it "
            "with ps); use the params file (chmod 600), CRONLOOP_DATABASE_PASSWORD, or the "
            "systemd credential database_password"
        )


def run_cli(argv: Sequence[str] | None = None) -> int:
    try:
        rest, param_file, overrides = split_argv(list(sys.argv[1:] if argv is None else argv))
        plugin_commands = commands_of(load_plugins(), COMMANDS)
        args = build_parser(plugin_commands).parse_args(rest)
        args.param_file_, args.overrides_ = param_file, overrides  # kept for SIGHUP reloads
        settings = load_settings(param_file=param_file, overrides=overrides)
    except ConfigError as exc:
        _say(f"cronloop: configuration error:\n{exc}")
        return exitcodes.CONFIG
    logs.configure(settings.log_level, settings.log_format)
    try:
        # every command imports task code or opens the database: none of them as root
        # unless asked (`--allow-root`), whichever command it is (a plugin's too)
        check_user(settings)
        if args.command in COMMANDS:
            return _run_async(COMMANDS[args.command](args, settings))
        return _run_async(run_command(plugin_commands[args.command], args, settings))
    except ConfigError as exc:
        _say(f"cronloop: configuration error:\n{exc}")
        return exitcodes.CONFIG
    except TaskDefinitionError as exc:  # a task's code is wrong: restarting will not help
        _say(f"cronloop: task definition error:\n{exc}")
        return exitcodes.CONFIG
    except (ExitError, CommandError) as exc:
        _say(f"cronloop: {exc}")
        return exc.exit_code
    except UnknownTask as exc:
        _say(f"cronloop: no task named {exc.args[0]!r} (see `cronloop status`)")
        return exitcodes.ERROR
    except KeyboardInterrupt:
        return exitcodes.OK
    except BrokenPipeError:
        # `cronloop status | head`: the reader left; not an error (Python docs' recipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return exitcodes.OK
    except Exception:
        log.exception("internal error")
        return exitcodes.SOFTWARE


def _say(text: str) -> None:
    """An error for the operator's terminal: what it quotes (a value, a driver's message,
    a task's text) may hold control characters; they are shown, not obeyed."""
    print(escape_controls(text, keep_newlines=True), file=sys.stderr)


def _run_async(coro: Awaitable[int]) -> int:
    """uvloop where available: the loop is created here, never at import time."""

    async def wrapper() -> int:
        return await coro

    try:
        import uvloop
    except ImportError:
        return asyncio.run(wrapper())
    return int(uvloop.run(wrapper()))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    sys.exit(run_cli(argv))
