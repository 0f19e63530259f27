"""Group commit: the runs that end in the same moment are recorded in one transaction.

A burst of short tasks ends hundreds of runs in a few milliseconds; a transaction each
would make the database, not the tasks, the limit. A run's end is queued; the first one
schedules a flush on the next turn of the event loop, so every run ending in that turn
joins it, and runs ending while a flush is in flight wait for the next one. Nothing waits
on a timer, so a lone run is recorded as fast as before. Each run still learns whether
its own write landed (False: its lease was lost), and a failed flush fails each of its
runs, which retry on their own (see `Runner._write`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cronloop.domain.records import Claim, RunRecord
from cronloop.runtime.dbhealth import DbHealth
from cronloop.store.sql.claims import TaskStore

Pending = tuple[Claim, RunRecord, bool, "asyncio.Future[bool]"]


class Recorder:
    def __init__(
        self, store: TaskStore, timeout_s: Callable[[], float], health: DbHealth | None = None
    ) -> None:
        self.store = store
        self.timeout_s = timeout_s  # bound on one flush: a partition must not hang it
        self.health = health or DbHealth()
        self._queue: list[Pending] = []
        self._flusher: asyncio.Future[None] | None = None

    async def complete(self, claim: Claim, record: RunRecord, *, keep_lease: bool = False) -> bool:
        """Record one run (with whatever else ends now); False if its lease was lost."""
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((claim, record, keep_lease, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await fut

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the runs that end in this turn of the loop join
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                async with asyncio.timeout(self.timeout_s()):
                    results = await self.store.complete_many([(c, r, k) for c, r, k, _ in batch])
            except asyncio.CancelledError:
                for *_, fut in batch:
                    fut.cancel()
                raise
            except Exception as exc:
                self.health.failed(exc)
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.health.ok()
            for (*_, fut), written in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(written)
