"""The task table as the web server shows it: read periodically through the store.

One `refresh` reads `status()` and the recent history (two store verbs, through the
database-error policy), and keeps the result: the status page, /api/tasks and the
table-describing gauges of /metrics all use that snapshot, so a scrape or a page load
costs no query. It never knows SQL text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from cronloop.domain.outcome import Outcome, TaskStatus
from cronloop.domain.records import RunEntry, TaskState
from cronloop.runtime.dbhealth import DatabaseFailure
from cronloop.web.gauges import GaugeReader, GaugeSample
from cronloop.web.view import WorkerView

log = structlog.get_logger("cronloop.web")

HISTORY_ROWS = 200  # recent runs read per refresh (the page shows some, last successes use all)
# the table gauges may be this old; runs that end here update the last success at once,
# and the page and the API read the table afresh. Reading a thousand rows costs the loop
# some milliseconds: not more often than this.
REFRESH_EVERY_S = 30.0


@dataclass(frozen=True)
class Snapshot:
    """The table at one moment; `read_at` is None until the first refresh succeeded."""

    states: tuple[TaskState, ...] = ()
    history: tuple[RunEntry, ...] = ()
    last_success: dict[str, datetime] = field(default_factory=dict)
    schema_current: bool = True
    gauges: tuple[GaugeSample, ...] = ()  # from the `cronloop.gauges` sources
    read_at: datetime | None = None

    def quarantined(self, state: TaskState) -> bool:
        return state.status == TaskStatus.QUARANTINED.value


class TableReader:
    def __init__(self, view: WorkerView, gauges: GaugeReader | None = None) -> None:
        self.view = view
        self.gauges = gauges
        self.snapshot = Snapshot()
        self.failed = False  # the last refresh failed (the database is away)

    async def refresh(self) -> Snapshot:
        """Read the table again; on a database failure keep the old snapshot."""
        health = self.view.health
        try:
            states = await health.call(self.view.store.status, what="web: reading status")
            history = await health.call(
                lambda: self.view.store.history(None, limit=HISTORY_ROWS), what="web: history"
            )
            schema = await health.call(self.view.schema_current, what="web: schema check")
        except DatabaseFailure:
            self.failed = True
            return self.snapshot
        self.failed = False
        now = self.view.clock.now()
        gauges = await self.gauges.read(now) if self.gauges else ()
        self.snapshot = Snapshot(
            states=tuple(states),
            history=tuple(history),
            last_success=last_successes(states, history, self.snapshot.last_success),
            schema_current=schema,
            gauges=gauges,
            read_at=now,
        )
        return self.snapshot

    def succeeded(self, task: str, when: datetime) -> None:
        """A run of `task` just succeeded here: known before the next refresh."""
        known = self.snapshot.last_success.get(task)
        if known is None or known < when:
            self.snapshot.last_success[task] = when

    async def run(self) -> None:
        """The side loop: refresh every `REFRESH_EVERY_S` (the server read it at start)."""
        while True:
            await self.view.clock.sleep(REFRESH_EVERY_S)
            await self.refresh()


def last_successes(
    states: Sequence[TaskState], history: Sequence[RunEntry], known: dict[str, datetime]
) -> dict[str, datetime]:
    """When each task last ended successfully, as far as the table tells: the task row
    when its last run succeeded, else the newest success in the recent history, else
    what an earlier refresh knew. A task whose last success is older than the history
    read and than this worker's start has none."""
    found = dict(known)
    ends = [(e.task_name, e.ended) for e in history if e.outcome == Outcome.SUCCESS.value]
    ends += [(s.name, s.latest_run_end) for s in states if s.last_outcome == Outcome.SUCCESS.value]
    for name, end in ends:
        if end is not None and (name not in found or found[name] < end):
            found[name] = end
    names = {state.name for state in states}
    return {name: when for name, when in found.items() if name in names}
