"""A lost race retried: the one conflict-retry helper for code outside the runtime loop.

The runtime's calls go through `cronloop.runtime.dbhealth.DbHealth.call`; everything
else that writes (the start-up task-table sync, the admin commands, the migration lock,
the standard tasks, a plugin's own transactions) wraps its whole transaction in
`retry_conflicts` or decorates it with `conflict_retry`. A conflict (a deadlock, a lock
wait timeout, a Galera certification failure on any statement or on COMMIT, SQLite
busy) is retried at once with a little jitter, a bounded number of times, logged at
debug and counted in `CONFLICTS_SEEN`; then the caller gets the driver's exception.
Other errors pass through untouched. It knows the error kinds, never what the
transaction does; the transaction must be safe to run again from the start.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import structlog

from cronloop.store.errors import CONFLICT_JITTER_S, CONFLICT_RETRIES, ErrorKind
from cronloop.store.sql.errors import classify

log = structlog.get_logger("cronloop.database")
T = TypeVar("T")
P = ParamSpec("P")

CONFLICTS_SEEN: Counter[str] = Counter()  # per `what`, since the process started

_rng = random.Random()


async def retry_conflicts(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    retries: int = CONFLICT_RETRIES,
    also: Callable[[BaseException], bool] | None = None,
) -> T:
    """`await op()` (a whole transaction), again on a conflict, at most `retries` more
    times. `also` names other errors worth one more try (a duplicate key when a
    concurrent writer inserted the same row first)."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return await op()
        except Exception as exc:
            lost_race = classify(exc) is ErrorKind.CONFLICT or (also is not None and also(exc))
            if not lost_race or attempt > retries:
                raise
            CONFLICTS_SEEN[what] += 1
            log.debug("database conflict; retrying", what=what, attempt=attempt)
            await asyncio.sleep(_rng.uniform(0, CONFLICT_JITTER_S * attempt))


def conflict_retry(
    what: str,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Awaitable[T]]]:
    """Decorate a coroutine function that is one whole transaction: see `retry_conflicts`."""

    def decorate(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            return await retry_conflicts(lambda: fn(*args, **kwargs), what=what)

        return wrapper

    return decorate
