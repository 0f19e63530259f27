"""The `cronloop` command: run the service, look at it, steer it.

Any setting can be given as `--key=value` (and iTop's `--param_file=F`), after the
command or before it. Exit codes are in `worker/exitcodes.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NoReturn

import structlog
from sqlalchemy.engine import make_url

from worker import exitcodes, logs
from worker.app import (
    ExitError,
    check_user,
    load_registry,
    open_database,
    sync,
    wait_for_database,
)
from worker.clock import SystemClock
from worker.db import create_engine
from worker.display import history_json, history_table, status_json, status_table, tasks_table
from worker.migrate import schema_state, upgrade
from worker.planning import RetryPolicy
from worker.registry import Registry, build_registry, discover
from worker.reload import reload_settings, report
from worker.runner import RunEnvironment
from worker.schedule import resolve_timezone
from worker.settings import ConfigError, Settings, describe_sources, load_settings
from worker.store import TriggerResult, UnknownTask
from worker.supervisor import Hooks, Supervisor
from worker.systemd import Notifier

log = structlog.get_logger("cronloop.cli")
COMMAND_OPTIONS = {"once", "json", "limit"}


@dataclass
class Invocation:
    """The command line, split into the command's own arguments and setting overrides."""

    args: argparse.Namespace
    param_file: str | None = None
    overrides: dict[str, str] = field(default_factory=dict)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cronloop",
        description="Run an application's background tasks from its database, under systemd.",
        epilog="Settings: --param-file FILE (iTop: --param_file=FILE), or any setting as "
        "--key=value; see `cronloop check-config`.",
    )
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
    sub.add_parser("backup", help="take a backup of the database now (the backup task's settings)")
    sub.add_parser("demo", help="fill the database with demo tickets, emails and drafts")
    mail = sub.add_parser("queue-email", help="queue an email for the email task to send")
    mail.add_argument("--to", action="append", required=True, help="recipient (repeatable)")
    mail.add_argument("--subject", required=True)
    mail.add_argument("--body", required=True, help="the plain-text body")
    mail.add_argument("--html-file", help="a file holding an HTML alternative")
    sub.add_parser("check-config", help="the effective settings and where each came from")
    return parser


def split_argv(argv: Sequence[str]) -> tuple[list[str], str | None, dict[str, str]]:
    """Take setting flags out of argv, wherever they stand; the rest goes to argparse."""
    rest: list[str] = []
    overrides: dict[str, str] = {}
    param_file: str | None = None
    items = iter(argv)
    for token in items:
        key, eq, value = token[2:].partition("=")
        norm = key.replace("-", "_")
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
        else:
            rest.append(token)
    return rest, param_file, overrides


def _refuse_secret_in_argv(key: str, value: str) -> None:
    """Any user can read a process's argv (`ps`); secrets belong in a file or a credential."""
    secret = key == "database_password" or (key == "database_url" and _url_has_password(value))
    if secret or (key.rpartition(".")[2].endswith(("password", "passwd"))):
        raise ConfigError(
            f"--{key}: do not put a password on the command line (other users can read it "
            "with ps); use the params file (chmod 600), CRONLOOP_DATABASE_PASSWORD, or the "
            "systemd credential database_password"
        )


def _url_has_password(value: str) -> bool:
    try:
        return make_url(value).password is not None
    except Exception:
        return ":" in value.partition("@")[0].partition("://")[2] and "@" in value


Command = Callable[[argparse.Namespace, Settings], Awaitable[int]]


async def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    check_user(settings)
    definitions = discover(settings.task_modules)
    registry = build_registry(settings, definitions)
    notifier = Notifier()
    clock = SystemClock()
    # waiting for the database and migrating may outlast TimeoutStartSec
    notifier.extend_timeout(settings.startup_db_wait_s + 120)
    db = await open_database(settings, wait=True)
    executor = ThreadPoolExecutor(
        max_workers=settings.max_concurrency, thread_name_prefix="cronloop-task"
    )
    try:
        await sync(db, registry, clock)
        env = RunEnvironment(
            store=db.store,
            settings=settings,
            clock=clock,
            db=db.sessions,
            executor=executor,
            retry=RetryPolicy(settings.retry_max, settings.retry_delay_s),
        )

        async def reloader(current: Settings) -> tuple[Settings, Registry] | None:
            def load() -> Settings:
                return load_settings(param_file=args.param_file_, overrides=args.overrides_)

            result = reload_settings(current, load, definitions)
            if result is None:
                return None
            logs.configure(result.settings.log_level, current.log_format)
            await sync(db, result.registry, clock)
            report(result, result.registry.names())
            return result.settings, result.registry

        supervisor = Supervisor(
            registry,
            env,
            once=args.once,
            hooks=_systemd_hooks(notifier, clock, settings.shutdown_grace + settings.grace_s + 15),
            reloader=reloader,
        )
        supervisor.install_signal_handlers()
        return await supervisor.run()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        notifier.close()
        await db.close()


def _systemd_hooks(notifier: Notifier, clock: SystemClock, drain_s: float) -> Hooks:
    interval = notifier.watchdog_interval_s
    last_ping = [0.0]

    def tick() -> None:
        if interval and clock.monotonic() - last_ping[0] >= interval:
            notifier.watchdog()
            last_ping[0] = clock.monotonic()

    def ready() -> None:
        notifier.ready("started")

    def status(text: str) -> None:
        notifier.status(text)

    def stopping() -> None:
        notifier.stopping("draining")
        # a drain may outlast TimeoutStopSec's default: tell systemd how long it can take
        notifier.extend_timeout(drain_s)

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
        print(
            status_json(states)
            if args.json
            else status_table(states, resolve_timezone(settings.timezone))
        )
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
    print(f"# params files read: {files}")
    print(f"# tasks: {len(registry)} ({', '.join(registry.names())})")
    return exitcodes.OK


async def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from tasks.backup import BackupBusy, BackupError, backup_now  # the standard task's own API

    check_user(settings)
    registry = load_registry(settings)
    if "backup" not in registry:
        raise ExitError("the backup task is not installed", exitcodes.ERROR)
    db = await open_database(settings, wait=True)
    try:
        path = await backup_now(settings, engine=db.engine, options=registry["backup"].options)
    except BackupBusy as exc:
        raise ExitError(str(exc), exitcodes.TEMPFAIL) from None
    except BackupError as exc:
        raise ExitError(f"backup failed: {exc}", exitcodes.ERROR) from None
    finally:
        await db.close()
    print(path)
    return exitcodes.OK


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from tasks.demo import fill_demo  # demo data lives with the standard tasks

    check_user(settings)
    db = await open_database(settings, wait=True)
    try:
        summary = await fill_demo(db.sessions, SystemClock().now())
    finally:
        await db.close()
    print(
        f"demo data added: {summary.tickets} tickets (SLA thresholds pass within a minute), "
        f"{summary.emails} queued emails, {summary.drafts} drafts ({summary.drafts - 2} "
        f"expired), {summary.exports} export results.\n"
        "Now run `cronloop run` and watch; then `cronloop status` and `cronloop history`."
    )
    return exitcodes.OK


async def cmd_queue_email(args: argparse.Namespace, settings: Settings) -> int:
    from tasks.outbox import queue_from_cli  # the email task's own API

    check_user(settings)
    db = await open_database(settings, wait=True)
    try:
        message_id = await queue_from_cli(
            db.engine, to=args.to, subject=args.subject, body=args.body, html_file=args.html_file
        )
    except ValueError as exc:
        raise ExitError(str(exc), exitcodes.ERROR) from None
    finally:
        await db.close()
    print(message_id)
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
    "backup": cmd_backup,
    "demo": cmd_demo,
    "queue-email": cmd_queue_email,
}


def run_cli(argv: Sequence[str] | None = None) -> int:
    try:
        rest, param_file, overrides = split_argv(list(sys.argv[1:] if argv is None else argv))
        args = build_parser().parse_args(rest)
        args.param_file_, args.overrides_ = param_file, overrides  # kept for SIGHUP reloads
        settings = load_settings(param_file=param_file, overrides=overrides)
    except ConfigError as exc:
        print(f"cronloop: configuration error:\n{exc}", file=sys.stderr)
        return exitcodes.CONFIG
    logs.configure(settings.log_level, settings.log_format)
    try:
        return _run_async(COMMANDS[args.command](args, settings))
    except ConfigError as exc:
        print(f"cronloop: configuration error:\n{exc}", file=sys.stderr)
        return exitcodes.CONFIG
    except ExitError as exc:
        print(f"cronloop: {exc}", file=sys.stderr)
        return exc.exit_code
    except UnknownTask as exc:
        print(f"cronloop: no task named {exc.args[0]!r} (see `cronloop status`)", file=sys.stderr)
        return exitcodes.ERROR
    except KeyboardInterrupt:
        return exitcodes.OK
    except Exception:
        log.exception("internal error")
        return exitcodes.SOFTWARE


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
