"""The job queue's commands: `enqueue`, `jobs`, `retry`, `cancel`, and the queue lines
of `status`. Each is `async def cmd_x(args, settings) -> exit code`, like `admin`'s;
`main` adds their arguments (`add_parsers`). Knows no SQL: the store's `JobStore` verbs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from cronloop import exitcodes
from cronloop.cli.bootstrap import ExitError, check_user, open_database
from cronloop.config.settings import Settings
from cronloop.definitions.discovery import discover_jobs
from cronloop.domain.jobs import JobCount, JobState, UnknownJob


def add_parsers(sub: Any) -> None:
    """The commands' arguments, on `main`'s subparsers."""
    enq = sub.add_parser("enqueue", help="queue a job (a @job handler) to run once")
    enq.add_argument("name")
    enq.add_argument("--args", default="{}", help="the arguments, a JSON object: '{\"id\": 7}'")
    enq.add_argument("--at", help="when to run it, ISO 8601 (default: now; no zone: UTC)")
    enq.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    enq.add_argument("--unique-key", help="no second job of this name and key while one waits")
    jobs = sub.add_parser("jobs", help="queued jobs: counts by job and state, the oldest waiting")
    jobs.add_argument("--state", choices=[s.value for s in JobState])
    jobs.add_argument("--json", action="store_true")
    sub.add_parser("retry", help="run a job in error, cancelled or quarantined again").add_argument(
        "id", type=int
    )
    sub.add_parser("cancel", help="cancel a planned job").add_argument("id", type=int)


def _when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ExitError(
            f"--at {text!r}: not an ISO 8601 time (e.g. 2026-12-24T18:00)", exitcodes.ERROR
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _args_of(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExitError(f"--args: not JSON: {exc}", exitcodes.ERROR) from None


async def _with_jobs(settings: Settings, action: Any) -> int:
    check_user(settings)
    db = await open_database(settings)
    try:
        return int(await action(db.store))
    except UnknownJob as exc:
        raise ExitError(
            f"no job with id {exc.args[0]} (see `cronloop jobs`)", exitcodes.ERROR
        ) from None
    except ValueError as exc:
        raise ExitError(str(exc), exitcodes.ERROR) from None
    finally:
        await db.close()


async def cmd_enqueue(args: argparse.Namespace, settings: Settings) -> int:
    values, at = _args_of(args.args), _when(args.at)
    _check_kind(args.name, settings)

    async def act(store: Any) -> int:
        job_id = await store.enqueue_job(
            args.name, values, run_at=at, priority=args.priority, unique_key=args.unique_key
        )
        print(job_id)
        return exitcodes.OK

    return await _with_jobs(settings, act)


def _check_kind(name: str, settings: Settings) -> None:
    """An operator's typo must not queue a job no worker will ever run: the kind must be
    one the configured modules define (code may still enqueue any kind, for workers
    configured elsewhere)."""
    kinds = sorted(d.name for d in discover_jobs(settings.task_modules))
    if name not in kinds:
        known = ", ".join(kinds) if kinds else "none"
        raise ExitError(f"no job kind {name!r} is defined here (known: {known})", exitcodes.ERROR)


def counts_table(counts: Sequence[JobCount]) -> str:
    if not counts:
        return "no jobs"
    rows = [("Job", "State", "Count", "Oldest run_at")]
    rows += [(c.kind, c.state.value, str(c.count), _iso(c.oldest) or "-") for c in counts]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def queue_summary(counts: Sequence[JobCount]) -> str:
    """One line for `status`: jobs by state, and the oldest waiting."""
    if not counts:
        return "Queue: empty"
    totals: dict[str, int] = {}
    for c in counts:
        totals[c.state.value] = totals.get(c.state.value, 0) + c.count
    waiting = [c.oldest for c in counts if c.state == JobState.PLANNED and c.oldest]
    parts = [f"{n} {state}" for state, n in sorted(totals.items())]
    oldest = f"; oldest planned {_iso(min(waiting))}" if waiting else ""
    return f"Queue: {', '.join(parts)}{oldest}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


async def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    async def show(store: Any) -> int:
        counts = [c for c in await store.job_counts() if args.state in (None, c.state.value)]
        if args.json:
            out = [
                {"job": c.kind, "state": c.state.value, "count": c.count, "oldest": _iso(c.oldest)}
                for c in counts
            ]
            print(json.dumps(out, indent=2))
        else:
            print(counts_table(counts))
        return exitcodes.OK

    return await _with_jobs(settings, show)


async def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    async def act(store: Any) -> int:
        now = datetime.now(UTC)
        old = await store.retry_job(args.id, now)
        if old not in (JobState.ERROR, JobState.CANCELLED, JobState.QUARANTINED):
            raise ExitError(
                f"job {args.id} is {old.value}: only error, cancelled or quarantined jobs "
                "are retried",
                exitcodes.ERROR,
            )
        print(f"job {args.id}: {old.value} -> planned")
        return exitcodes.OK

    return await _with_jobs(settings, act)


async def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    async def act(store: Any) -> int:
        old = await store.cancel_job(args.id)
        if old != JobState.PLANNED:
            raise ExitError(
                f"job {args.id} is {old.value}: only planned jobs can be cancelled",
                exitcodes.ERROR,
            )
        print(f"job {args.id}: planned -> cancelled")
        return exitcodes.OK

    return await _with_jobs(settings, act)


JOB_COMMANDS = {"enqueue": cmd_enqueue, "jobs": cmd_jobs, "retry": cmd_retry, "cancel": cmd_cancel}
