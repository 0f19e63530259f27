"""The one owner of what a database failure means to the service.

Every database call the runtime makes (the probe, claims, releases, lease renewals,
recordings, reaping, the start-up wait) goes through `DbHealth.call`, which bounds it in
time and acts on the kind of failure, as the store classifies it (`Store.classify_error`):

- conflict (deadlock, lock wait timeout, a Galera certification failure, SQLite busy):
  the transaction is retried at once, a few times, with a little jitter; logged at debug
  and counted, never an outage. Still conflicting after that, the caller gets
  `DatabaseFailure` and tries again on its next turn, without an outage being declared;
- outage (connection lost or refused, server gone or not ready, our own timeout): one
  error line, then a reminder every `REMINDER_EVERY_S`, one "reachable again" when a call
  succeeds; callers back off (`backoff_s`: capped, with jitter) and resume by themselves;
- refused (the database will not store this data): never an outage and never retried
  here; the caller (the recorder) records something it will store instead;
- bug (anything else): raised as it is, so the worker fails loudly.

A call whose task is being cancelled ends with `CancelledError`, whatever the driver
raised on the way out: a cancel lost in a database error left a side loop running after
the loop had stopped it, and `run --once` hung until the watchdog killed it.

It knows the four kinds, not the drivers; it never knows what a call is for.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from cronloop.domain.clock import Clock
from cronloop.store.errors import CONFLICT_JITTER_S, CONFLICT_RETRIES, ErrorKind
from cronloop.systemd.logs import short_error as short

log = structlog.get_logger("cronloop.database")
T = TypeVar("T")

MAX_BACKOFF_S = 10.0  # so a worker resumes within 10 s once the database is back
REMINDER_EVERY_S = 60.0


class DatabaseFailure(Exception):
    """A database call failed in a way its caller handles: an outage, a conflict that
    outlived its retries, or a refused row. `kind` says which; `__cause__` is the
    driver's exception."""

    def __init__(self, kind: ErrorKind, exc: BaseException) -> None:
        super().__init__(f"{kind.value}: {short(exc)}")
        self.kind = kind
        self.error = exc

    @property
    def refused(self) -> bool:
        """The database refused the data: retrying the same write cannot help."""
        return self.kind is ErrorKind.REFUSED


class DbHealth:
    """The policy, and what it knows: whether the database is down, since when, how
    many failures of each kind were seen (`counts`, for `cronloop_database_errors_total`)."""

    def __init__(
        self,
        clock: Clock,
        timeout_s: Callable[[], float],
        classify_error: Callable[[BaseException], ErrorKind],
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.timeout_s = timeout_s  # bound on one call: a partition must not hang it
        self.classify = classify_error
        self.counts: Counter[ErrorKind] = Counter()
        self._rng = rng or random.Random()
        self.down_since: float | None = None  # monotonic time the outage began
        self.back_since: float | None = None  # monotonic time the database came back
        self.failures = 0  # failed attempts in the current outage
        self._last_reminder = 0.0
        self._recovered: list[Callable[[], None]] = []

    def errors_total(self) -> dict[str, int]:
        """Failures seen per kind since start (`cronloop_database_errors_total{kind}`)."""
        return {kind.value: self.counts[kind] for kind in ErrorKind}

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def on_recovered(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the database is reachable again (the loop may be in a
        long backoff and should wake)."""
        self._recovered.append(callback)

    def settled(self, after_s: float) -> bool:
        """True unless the database is down or came back less than `after_s` ago."""
        if self.down_since is not None:
            return False
        return self.back_since is None or self.clock.monotonic() - self.back_since >= after_s

    async def call(self, op: Callable[[], Awaitable[T]], *, what: str) -> T:
        """Run `op` (a whole transaction: it is called again on a conflict), bounded by
        `timeout_s`. Raises `DatabaseFailure` for an outage, a lasting conflict or a
        refused row; a bug's exception as it is."""
        attempt = 0
        while True:
            attempt += 1
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                async with asyncio.timeout(self.timeout_s()):
                    result = await op()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _being_cancelled():
                    # a cancel the driver's clean-up turned into an error (SQLAlchemy's
                    # rollback on the connection aiomysql closed when the cancel arrived
                    # raises, and that error replaces the CancelledError): a cancel
                    raise asyncio.CancelledError() from exc
                kind = self.classify(exc)
                self.counts[kind] += 1
                if kind is ErrorKind.CONFLICT and attempt <= CONFLICT_RETRIES:
                    log.debug("database conflict; retrying", what=what, attempt=attempt)
                    await self.clock.sleep(self._rng.uniform(0, CONFLICT_JITTER_S * attempt))
                    continue
                self._failed(kind, exc, what)
                if kind is ErrorKind.BUG:
                    raise
                raise DatabaseFailure(kind, exc) from exc
            self.ok()
            if _being_cancelled():  # a driver that swallowed the cancel: still a cancel
                raise asyncio.CancelledError()
            return result

    async def call_quietly(self, op: Callable[[], Awaitable[object]], what: str) -> None:
        """`call` for a write whose failure (outage, conflict, refusal) the next round
        mends: the failure is the policy's to log, the caller goes on."""
        with contextlib.suppress(DatabaseFailure):
            await self.call(op, what=what)

    def ok(self) -> None:
        """A call succeeded: end an outage, if there was one."""
        if self.down_since is None:
            return
        now = self.clock.monotonic()
        log.warning("database reachable again", down_s=round(now - self.down_since, 1))
        self.down_since = None
        self.back_since = now
        self.failures = 0
        for callback in self._recovered:
            callback()

    def _failed(self, kind: ErrorKind, exc: BaseException, what: str) -> None:
        if kind is ErrorKind.OUTAGE:
            self._outage(exc, what)
        elif kind is ErrorKind.CONFLICT:
            log.warning("database conflict persisted; trying again later", what=what)
        elif kind is ErrorKind.REFUSED:
            log.debug("database refused the data", what=what, error=short(exc))
        else:
            log.error("database call failed: a bug", what=what, error=short(exc))

    def _outage(self, exc: BaseException, what: str) -> None:
        now = self.clock.monotonic()
        self.failures += 1
        if self.down_since is None:
            self.down_since = now
            self._last_reminder = now
            log.error("database unreachable; retrying with backoff", what=what, error=short(exc))
        elif now - self._last_reminder >= REMINDER_EVERY_S:
            self._last_reminder = now
            log.error(
                "database still unreachable",
                down_s=round(now - self.down_since, 1),
                attempts=self.failures,
                error=short(exc),
            )

    def backoff_s(self, base_s: float, attempt: int, cap_s: float = MAX_BACKOFF_S) -> float:
        """How long to wait before attempt `attempt + 1`: `base_s` doubling, at most
        `cap_s`, with jitter (half to all of it) so workers do not retry in step."""
        delay = min(cap_s, base_s * 2.0 ** min(max(attempt - 1, 0), 16))
        return delay * self._rng.uniform(0.5, 1.0)

    def loop_backoff_s(self, poll_interval: float) -> float:
        """The loop's wait during an outage, from its count of failed attempts."""
        return self.backoff_s(poll_interval * 2, self.failures)


def _being_cancelled() -> bool:
    """Whether the current task has a cancellation requested that nothing took back
    (`asyncio.timeout` takes its own back when it converts it to `TimeoutError`)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
