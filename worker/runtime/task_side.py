"""The periodic tasks' side of a turn of the loop: when to ask the database, what to
claim, and the runs claimed ahead until their time.

The twin of `JobSide` (queued jobs). Each turn, the supervisor says how many runs are in
flight; this side asks only when what it knows has gone stale (`DueTracker`), claims what
is due (plus the short window ahead, `Planned`), and hands back the claims whose time has
come. Every call goes through the database-health policy. It never starts a runner and
never sleeps: the supervisor does both.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from cronloop.config.settings import Settings
from cronloop.domain.clock import Clock
from cronloop.domain.records import Claim
from cronloop.runtime.dbhealth import DatabaseFailure, DbHealth
from cronloop.runtime.due import DueTracker
from cronloop.runtime.planned import Planned
from cronloop.store.interface import Store

log = structlog.get_logger("cronloop.supervisor")

CLAIM_BATCH = 100  # rows per claim: a bigger one would delay the first run of a burst
CLAIM_BATCH_MORE = 200  # rows per claim while more runs are due than one claim took


@dataclass
class TaskTurn:
    """What one turn of the task side found."""

    idle: bool  # nothing was due (with --once: the loop may end)
    start: list[tuple[Claim, float]] = field(default_factory=list)  # (claim, claimed_mono)
    claimed: bool = False  # a claim was made (the STATUS line is worth refreshing)


class TaskSide:
    def __init__(
        self,
        store: Store,
        health: DbHealth,
        clock: Clock,
        settings: Callable[[], Settings],
    ) -> None:
        self.store = store
        self.health = health
        self.clock = clock
        self._settings = settings
        self.due = DueTracker(settings().poll_interval)
        self.planned = Planned()  # claimed ahead, waiting for their time
        self.once_cutoff: datetime | None = None  # --once: what was due at the start

    def forget(self) -> None:
        """The settings changed (a reload): ask the database again before trusting
        anything learnt under the old ones."""
        self.due = DueTracker(self._settings().poll_interval)

    def pop_due(self) -> list[tuple[Claim, float]]:
        """The runs claimed ahead whose time has come."""
        return self.planned.pop_due(self.clock.now())

    async def turn(self, running: int) -> TaskTurn:
        """Claim what is due into the slots `running` runs leave free; the claims whose
        time has come are the caller's to start now, the others wait in `planned`."""
        # a small first batch, so the first run of a burst starts at once; bigger ones
        # while more is due, so fewer commits carry the rest
        size = CLAIM_BATCH_MORE if self.due.more else CLAIM_BATCH
        capacity = min(self._settings().max_concurrency - running - len(self.planned), size)
        if capacity <= 0:
            return TaskTurn(idle=False)
        mono = self.clock.monotonic()
        if not self.due.fresh(mono) and not self.due.more:
            try:
                next_due = await self.health.call(self.store.next_due, what="the probe")
            except DatabaseFailure:
                return TaskTurn(idle=False)
            self.due.learn(next_due, mono)
        # --once runs what was due when it started, not what falls due while it runs
        at = self.once_cutoff or self.due.claim_at(self.clock.now())
        if self.due.nothing_due(at, mono):
            return TaskTurn(idle=True)
        takeover = self._may_take_over()
        try:
            batch = await self.health.call(
                lambda: self.store.claim_next(at, capacity, takeover=takeover), what="claiming"
            )
        except DatabaseFailure:
            self.due.forget()
            return TaskTurn(idle=False)
        self.due.claimed_in(self.clock.monotonic() - mono)
        self.due.after_claim(batch.next_due, at, mono)
        if batch.claims:
            log.debug("planned now", tasks=len(batch.claims))
        now = self.clock.now()
        start = []
        for claim in batch.claims:  # claimed ahead: each run starts at its time, not before
            if claim.scheduled_for <= now:
                start.append((claim, mono))
            else:
                self.planned.add(claim, mono)
        return TaskTurn(idle=not batch.claims, start=start, claimed=True)

    def _may_take_over(self) -> bool:
        """Just after an outage, leave expired leases to their owners for a third of a
        lease: a run that ended while the database was away is being recorded by its
        worker now (retried every second), and taking it over would run it twice."""
        return self.health.settled(self._settings().lease_s / 3)

    async def release_planned(self) -> None:
        """A stop: give the runs claimed ahead back unrun; the next worker runs them."""
        claims = self.planned.take_all()
        if claims:
            log.info("giving back runs claimed ahead of their time", runs=len(claims))
        for claim in claims:
            await self.health.call_quietly(
                functools.partial(self.store.release, claim), "releasing"
            )
