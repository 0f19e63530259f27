"""The standard tasks as a cronloop plugin: their task modules, tables, migrations and
the commands `backup`, `restore`, `demo` and `queue-email`.

Registered in pyproject under the entry-point group ``cronloop.plugins``; a third-party
package does exactly the same. The handlers import the task modules they drive only when
run, so building the command line costs this one module.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from cronloop import Command, CommandContext, CommandError, Plugin, exitcodes


async def cmd_backup(ctx: CommandContext) -> int:
    from cronloop.standard.backup import BackupBusy, BackupError, backup_now

    options = ctx.task_options("backup")
    if options is None:
        raise CommandError("the backup task is not installed", exitcodes.ERROR)
    async with ctx.database() as db:
        try:
            path = await backup_now(ctx.settings, engine=db.engine, options=options)
        except BackupBusy as exc:
            raise CommandError(str(exc), exitcodes.TEMPFAIL) from None
        except BackupError as exc:
            raise CommandError(f"backup failed: {exc}", exitcodes.ERROR) from None
    ctx.print(str(path))
    return exitcodes.OK


def _restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("archive", type=Path, help="a .tar.gz made by the backup task")
    parser.add_argument(
        "--yes", action="store_true", help="really overwrite (without it: verify and describe)"
    )


async def cmd_restore(ctx: CommandContext) -> int:
    """Exit 0: restored; 1: verified and described, nothing restored (no --yes);
    65: the archive was refused or the restore failed (the message says which)."""
    from cronloop.standard.backup import BackupError
    from cronloop.standard.backup_restore import restore_archive

    try:
        done = await restore_archive(
            ctx.args.archive,
            ctx.database_url(),
            ctx.settings.database_password,
            yes=ctx.args.yes,
            out=ctx.print,
        )
    except BackupError as exc:
        raise CommandError(f"restore failed: {exc}", exitcodes.DATAERR) from None
    return exitcodes.OK if done else exitcodes.ERROR


async def cmd_demo(ctx: CommandContext) -> int:
    from cronloop.standard.demo import fill_demo

    async with ctx.database() as db:
        summary = await fill_demo(db.sessions, datetime.now(UTC))
    ctx.print(
        f"demo data added: {summary.tickets} tickets (SLA thresholds pass within a minute), "
        f"{summary.emails} queued emails, {summary.drafts} drafts ({summary.drafts - 2} "
        f"expired), {summary.exports} export results.\n"
        "Now run `cronloop run` and watch; then `cronloop status` and `cronloop history`."
    )
    return exitcodes.OK


def _queue_email_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", action="append", required=True, help="recipient (repeatable)")
    parser.add_argument("--subject", required=True)
    parser.add_argument("--body", required=True, help="the plain-text body")
    parser.add_argument("--html-file", help="a file holding an HTML alternative")


async def cmd_queue_email(ctx: CommandContext) -> int:
    from cronloop.standard.outbox import queue_from_cli

    args = ctx.args
    async with ctx.database() as db:
        try:
            message_id = await queue_from_cli(
                db.engine,
                to=args.to,
                subject=args.subject,
                body=args.body,
                html_file=args.html_file,
            )
        except ValueError as exc:
            raise CommandError(str(exc), exitcodes.ERROR) from None
    ctx.print(message_id)
    return exitcodes.OK


plugin = Plugin(
    name="standard",
    task_modules=("cronloop.standard",),
    commands=(
        Command(
            "backup", "take a backup of the database now (the backup task's settings)", cmd_backup
        ),
        Command(
            "restore",
            "verify a backup archive, say what it overwrites, restore it with --yes",
            cmd_restore,
            _restore_arguments,
        ),
        Command("demo", "fill the database with demo tickets, emails and drafts", cmd_demo),
        Command(
            "queue-email",
            "queue an email for the email task to send",
            cmd_queue_email,
            _queue_email_arguments,
        ),
    ),
    migrations="cronloop.standard.migrations",
    metadata="cronloop.standard.schema:metadata",
)
