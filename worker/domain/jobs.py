"""The job queue's records and its one retry rule: plain data, no storage, no I/O.

A job is one queued call of a `@job` handler with JSON arguments. Its states are
`planned` (waiting, maybe for a later `run_at`), `running` (leased by a worker), `done`,
`error` (retries exhausted or a permanent failure; the last error kept), `cancelled` and
`quarantined` (its attempts lost their worker `quarantine_strikes` times: a poison job).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from cronloop.domain.records import Claim


class JobState(StrEnum):
    PLANNED = "planned"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"
    QUARANTINED = "quarantined"  # lost its worker `quarantine_strikes` times


#: the states in which a job's unique key is held (a second enqueue returns that job)
ACTIVE_STATES = (JobState.PLANNED, JobState.RUNNING)


class UnknownJob(LookupError):
    """No job with that id in the table."""


@dataclass(frozen=True)
class JobClaim:
    """One attempt of a job this worker now owns, until its lease runs out.

    `attempts` counts this one; `took_over` is true when the lease taken had expired
    (the worker running it was lost), which counted in `strikes`."""

    job_id: int
    kind: str
    args: dict[str, Any]
    token: str
    run_id: str
    run_at: datetime
    attempts: int
    max_retries: int | None  # the job's own limit; None: its kind's
    took_over: bool = False
    strikes: int = 0  # attempts that lost their worker, this takeover included

    @property
    def suspect(self) -> bool:
        """The job lost a worker before: it runs beside no other suspect on a worker."""
        return self.strikes > 0

    @property
    def claim(self) -> Claim:
        """The attempt as the runner and the lease keeper know a run."""
        return Claim(
            task_id=self.job_id,
            name=self.kind,
            token=self.token,
            run_id=self.run_id,
            scheduled_for=self.run_at,
            planned_run=None,
            triggered=False,
            took_over=None,
            consecutive_failures=self.attempts - 1,
        )


@dataclass(frozen=True)
class JobInfo:
    """A job row as the operator sees it."""

    id: int
    kind: str
    state: JobState
    priority: int
    run_at: datetime
    attempts: int
    max_retries: int | None
    unique_key: str | None
    last_error: str | None
    created: datetime
    finished: datetime | None
    strikes: int = 0  # attempts whose worker was lost (taken over)


@dataclass(frozen=True)
class JobCount:
    """How many jobs of a kind are in a state, and the oldest `run_at` among them."""

    kind: str
    state: JobState
    count: int
    oldest: datetime | None


@dataclass(frozen=True)
class RetryRule:
    """A kind's retry settings (iTop's `async_task_retries`)."""

    max_retries: int = 3
    retry_delay_s: float = 60.0
    exponential_delay: bool = True

    def delay_after(self, attempts: int, job_max_retries: int | None = None) -> float | None:
        """Seconds until the next attempt after `attempts` failed ones, or None when the
        retries are exhausted. Exponential: delay, 2 x delay, 4 x delay, ..."""
        limit = self.max_retries if job_max_retries is None else job_max_retries
        if attempts > limit:
            return None
        if not self.exponential_delay:
            return self.retry_delay_s
        return float(self.retry_delay_s * 2 ** max(attempts - 1, 0))


MAX_NAME = 190  # characters of a kind or a unique key (their columns)
MAX_ARGS_BYTES = 65_535  # the JSON of the arguments (a TEXT column on MySQL)


def args_json(kind: str, args: Any) -> str:
    """The arguments as stored: a JSON object. ValueError names the job and the problem."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ValueError(
            f"job {kind!r}: args must be a JSON object (a dict of keyword arguments), "
            f"not {type(args).__name__}"
        )
    try:
        text = json.dumps(args, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"job {kind!r}: args are not JSON-serialisable: {exc}") from None
    if len(text.encode()) > MAX_ARGS_BYTES:
        raise ValueError(
            f"job {kind!r}: args are {len(text.encode())} bytes of JSON; at most {MAX_ARGS_BYTES}"
        )
    return text


def check_job(
    kind: str,
    unique_key: str | None,
    priority: int,
    max_retries: int | None,
    run_at: datetime | None,
) -> None:
    """Refuse what the table could not hold or would hold wrongly, naming the field."""
    if not isinstance(kind, str) or not kind or len(kind) > MAX_NAME:
        raise ValueError(
            f"job name {kind!r}: must be a non-empty string of at most {MAX_NAME} characters"
        )
    if unique_key is not None and (
        not isinstance(unique_key, str) or not unique_key or len(unique_key) > MAX_NAME
    ):
        raise ValueError(
            f"job {kind!r}: unique_key must be a non-empty string of at most {MAX_NAME} characters"
        )
    if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > 2**31 - 1:
        raise ValueError(f"job {kind!r}: priority {priority!r} must be a whole number")
    if max_retries is not None and (not isinstance(max_retries, int) or max_retries < 0):
        raise ValueError(f"job {kind!r}: max_retries {max_retries!r} must be a whole number >= 0")
    if run_at is not None and run_at.tzinfo is None:
        raise ValueError(f"job {kind!r}: run_at {run_at!r} is naive; give an aware datetime (UTC)")
