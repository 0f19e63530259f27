"""Recording how runs ended: group commit, the fenced retry, and refused rows.

Group commit. A burst of short tasks ends hundreds of runs in a few milliseconds; a
transaction each would make the database, not the tasks, the limit. A run's end is
queued; the first one schedules a flush on the next turn of the event loop, so every run
ending in that turn joins it, and runs ending while a flush is in flight wait for the next
one. A lone run is recorded at once. When runs end in a steady stream (each a few
milliseconds after the previous flush), flushes are spaced `window_s` apart (the
`cronloop run` service uses `RECORD_WINDOW_S`), so one transaction carries the runs of a
window instead of one each; the wait is cut short once as many runs are queued as half
the slots (`eager_at`), so a full worker never waits on the window for a free slot.

The fenced retry. Every write is conditional on the run's lease token, so it is safe at any
time: it lands if nobody took the run over, even after an outage longer than the lease,
and is refused otherwise. So a write that fails for an outage is retried (backing off to
`RECORD_RETRY_MAX_S`, so a recovered database hears from the owner before any takeover)
until it lands or is refused; giving up would let the finished run be taken over and run
again. Only the run's `give_up` (a shutdown past its grace) ends the retries.

Refused rows. A batch the database refuses (text too long, an encoding it cannot store)
is split until the refused run is alone; the others land. That run is recorded with a
placeholder naming what was refused, so its outcome, statistics and next run still land
and its lease is freed. It never counts as an outage and is never retried as it was.

The database-error policy is `DbHealth`'s; this module only decides what to write.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any

import structlog

from cronloop.domain.records import Claim, RunRecord
from cronloop.runtime.dbhealth import DatabaseFailure, DbHealth
from cronloop.store.errors import ErrorKind
from cronloop.store.interface import Store
from cronloop.systemd.logs import short_error as short

log = structlog.get_logger("cronloop.recording")

RECORD_RETRY_BASE_S = 0.25
RECORD_RETRY_MAX_S = 1.0
# the service's recording window: at 100 runs/s, five runs per transaction; at most this
# long between a run's end and its record, far below any lease or period that matters
RECORD_WINDOW_S = 0.05
PLACEHOLDER_MAX = 500  # characters of the placeholder text


class Written(StrEnum):
    """What became of a run's record."""

    WRITTEN = "written"
    PLACEHOLDER = "placeholder"  # written, with a placeholder for the text refused
    LEASE_LOST = "lease_lost"  # nothing written: another worker owns the task now
    REFUSED = "refused"  # nothing written: refused even with placeholders
    GAVE_UP = "gave_up"  # nothing written: the run gave up retrying (abort)

    @property
    def landed(self) -> bool:
        return self in (Written.WRITTEN, Written.PLACEHOLDER)


@dataclasses.dataclass
class _Pending:
    claim: Claim
    record: RunRecord
    keep_lease: bool
    fut: asyncio.Future[Written]

    @property
    def ended(self) -> tuple[Claim, RunRecord, bool]:
        return (self.claim, self.record, self.keep_lease)


class Recorder:
    def __init__(
        self,
        store: Store,
        health: DbHealth,
        window_s: float = 0.0,
        eager_at: Callable[[], int] = lambda: 1,
    ) -> None:
        self.store = store
        self.health = health
        self.window_s = window_s  # 0: every flush at once (tests that count loop turns)
        self.eager_at = eager_at  # this many runs queued: flush without waiting
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Future[None] | None = None
        self._last_flush = -math.inf  # loop time the previous flush began
        self._full = asyncio.Event()

    async def complete(
        self,
        claim: Claim,
        record: RunRecord,
        *,
        keep_lease: bool = False,
        give_up: Callable[[], bool] = lambda: False,
        run_log: Any = log,
    ) -> Written:
        """Record one run (with whatever else ends now), retrying through outages."""
        attempt = 0
        while True:
            attempt += 1
            try:
                written = await self._enqueue(claim, record, keep_lease)
                break
            except DatabaseFailure as failure:  # an outage, or a conflict that lasted
                if give_up():
                    run_log.error(
                        "could not record the run; its lease will expire and it will run again",
                        error=short(failure.error),
                    )
                    return Written.GAVE_UP
                if attempt == 1:
                    run_log.warning(
                        "recording the run failed; retrying until it lands",
                        error=short(failure.error),
                    )
                delay = self.health.backoff_s(RECORD_RETRY_BASE_S, attempt, RECORD_RETRY_MAX_S)
                await self.health.clock.sleep(delay)
        if attempt > 1:
            run_log.info("run recorded after retries", attempts=attempt, written=written.value)
        if written is Written.LEASE_LOST:
            run_log.warning("lease lost before the run was recorded; another worker owns the task")
        return written

    async def _enqueue(self, claim: Claim, record: RunRecord, keep_lease: bool) -> Written:
        fut: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(claim, record, keep_lease, fut))
        if len(self._queue) >= self.eager_at():
            self._full.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await fut

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the runs that end in this turn of the loop join
        while self._queue:
            await self._window()
            batch, self._queue = self._queue, []
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                for item in batch:
                    item.fut.cancel()
                raise
            except Exception as exc:  # an outage or lasting conflict (retried), or a bug
                for item in batch:
                    if not item.fut.done():
                        item.fut.set_exception(exc)

    async def _window(self) -> None:
        """In a steady stream of ends, wait out the rest of the window since the last
        flush (cut short when enough runs are queued); a lone run does not wait."""
        loop = asyncio.get_running_loop()
        wait_s = self._last_flush + self.window_s - loop.time()
        if wait_s > 0 and len(self._queue) < self.eager_at():
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), wait_s)
        self._last_flush = loop.time()

    async def _write(self, batch: Sequence[_Pending]) -> None:
        """Write `batch` in one transaction; if refused, split it until the refused run
        is alone, resolving each part as it lands."""
        try:
            results = await self.health.call(
                lambda: self.store.complete_many([p.ended for p in batch]), what="recording"
            )
        except DatabaseFailure as failure:
            if failure.kind is not ErrorKind.REFUSED:
                raise
            if len(batch) == 1:
                await self._write_placeholder(batch[0], failure.error)
                return
            middle = len(batch) // 2
            await self._write(batch[:middle])
            await self._write(batch[middle:])
            return
        for item, landed in zip(batch, results, strict=True):
            if not item.fut.done():
                item.fut.set_result(Written.WRITTEN if landed else Written.LEASE_LOST)

    async def _write_placeholder(self, item: _Pending, refusal: BaseException) -> None:
        """Record a refused run with placeholders for its text, alone."""
        record = placeholder_record(item.record, refusal)
        log.warning(
            "the database refused a run's record; recording it with a placeholder",
            task=item.claim.name,
            run_id=item.claim.run_id,
            error=_ascii(short(refusal)),
        )
        try:
            [landed] = await self.health.call(
                lambda: self.store.complete_many([(item.claim, record, item.keep_lease)]),
                what="recording",
            )
        except DatabaseFailure as failure:
            if failure.kind is not ErrorKind.REFUSED:
                raise
            log.error(
                "the database refused a run's record even with placeholders; it is not "
                "recorded and will run again once its lease expires",
                task=item.claim.name,
                run_id=item.claim.run_id,
                error=_ascii(short(failure.error)),
            )
            item.fut.set_result(Written.REFUSED)
            return
        item.fut.set_result(Written.PLACEHOLDER if landed else Written.LEASE_LOST)


def placeholder_record(record: RunRecord, refusal: BaseException) -> RunRecord:
    """`record` with its free text replaced by plain ASCII saying what was refused."""
    sizes = [
        f"{name} of {len(text)} characters"
        for name, text in (("message", record.message), ("error", record.error))
        if text is not None
    ]
    what = ", ".join(sizes) or "record"
    text = _ascii(f"[not recorded: the database refused this run's {what}: {short(refusal)}]")
    text = text[: PLACEHOLDER_MAX - 1] + "]" if len(text) > PLACEHOLDER_MAX else text
    return dataclasses.replace(
        record,
        message=None if record.message is None else text,
        error=text if record.error is not None or record.message is None else None,
    )


def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")
