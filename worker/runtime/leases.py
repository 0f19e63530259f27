"""The one owner of lease validity: renews the leases of running runs, and stops a run
that cannot keep its lease.

A lease is renewed every `lease_s / 3`. If renewals fail (database unreachable, loop
starved) the run is stopped once a third of the lease is left, measured on this worker's
monotonic clock from the last successful renewal; since that renewal was sent before the
database stamped it, the local view is always the pessimistic one. So a worker that
cannot prove it still owns a run stops it before another worker may take it over.

Each run gets a `Lease` when it is claimed. The run reads it (`valid_until`, which its
checkpoints ask, from a thread too) and tells it when its end is being written
(`recording`); only the keeper changes what it knows. Failures go through `DbHealth`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import structlog

from cronloop.definitions.context import StopReason
from cronloop.domain.clock import Clock
from cronloop.domain.records import Claim
from cronloop.runtime.dbhealth import DatabaseFailure, DbHealth

log = structlog.get_logger("cronloop.leases")


class Renews(Protocol):
    """What the keeper needs of a store: `renew` (the task table's, or the job table's
    through `renew_jobs`)."""

    async def renew(self, claims: Iterable[Claim]) -> set[str]: ...


class Lease:
    """One run's lease as this worker knows it. Read by the run; changed by the keeper."""

    __slots__ = ("_confirmed_mono", "_margin_s", "_recording", "_stop", "claim", "log", "lost")

    def __init__(self, claim: Claim, confirmed_mono: float, margin_s: float) -> None:
        self.claim = claim
        self.log: Any = log
        self._confirmed_mono = confirmed_mono
        self._margin_s = margin_s
        self._stop: Callable[[StopReason], None] = lambda reason: None
        self._recording = False
        self.lost = False  # the keeper stopped the run for its lease (counted once)

    def attach(self, stop: Callable[[StopReason], None], run_log: Any) -> None:
        """The run says how the keeper stops it when the lease is lost."""
        self._stop = stop
        self.log = run_log

    def valid_until(self) -> float:
        """The monotonic time after which this worker can no longer prove it owns the run."""
        return self._confirmed_mono + self._margin_s

    @property
    def confirmed_mono(self) -> float:
        return self._confirmed_mono

    @property
    def is_recording(self) -> bool:
        return self._recording

    def recording(self, active: bool) -> None:
        """The run says its end is being written (True), or that it keeps its lease after
        all (False: a task left behind). While written, the write itself may clear the
        token at any moment, and that write is fenced: the run is not stopped for it."""
        self._recording = active


class LeaseKeeper:
    def __init__(self, store: Renews, clock: Clock, lease_s: float, health: DbHealth) -> None:
        self.store = store
        self.clock = clock
        self.lease_s = lease_s
        self.health = health
        self._leases: dict[str, Lease] = {}  # run id -> its lease
        self.lost_total = 0  # runs stopped for a lost lease (`cronloop_leases_lost_total`)

    @property
    def interval_s(self) -> float:
        return self.lease_s / 3

    @property
    def margin_s(self) -> float:
        """How long a confirmed lease may be relied on: two thirds of it."""
        return self.lease_s * 2 / 3

    def track(self, claim: Claim, claimed_mono: float) -> Lease:
        """A run starts: its lease was good when `claimed_mono` was read."""
        lease = Lease(claim, claimed_mono, self.margin_s)
        self._leases[claim.run_id] = lease
        return lease

    def forget(self, claim: Claim) -> None:
        """The run ended and its lease was freed (or taken over): renew it no more."""
        self._leases.pop(claim.run_id, None)

    async def run(self) -> None:
        """The side loop: a round every `interval_s`."""
        while True:
            await self.clock.sleep(self.interval_s)
            await self.renew()

    async def renew(self) -> None:
        """One round: renew every lease, stop runs whose lease is lost or about to be."""
        leases = list(self._leases.values())
        if not leases:
            return
        sent_mono = self.clock.monotonic()
        try:
            lost = await self.health.call(
                lambda: self.store.renew([lease.claim for lease in leases]), what="lease renewal"
            )
        except DatabaseFailure:
            self._stop_expiring(leases)
            return
        for lease in leases:
            if lease.claim.run_id not in self._leases:
                continue  # it ended during the round
            if lease.claim.run_id in lost:
                if lease.is_recording:
                    continue  # its own write just cleared the token (and that write is fenced)
                lease.log.error("lease lost: another worker may own this task now; stopping it")
                lease._confirmed_mono = -math.inf
                self._lost(lease)
            else:
                lease._confirmed_mono = sent_mono

    def _stop_expiring(self, leases: list[Lease]) -> None:
        now = self.clock.monotonic()
        for lease in leases:
            if lease.is_recording:
                continue  # its task has ended; its (fenced) write is retried until it lands
            age = now - lease.confirmed_mono
            if age >= self.margin_s:
                lease.log.error(
                    "cannot renew the lease; stopping the task before it expires",
                    lease_age_s=round(age, 3),
                )
                self._lost(lease)

    def _lost(self, lease: Lease) -> None:
        """Stop the run for its lease; count each run once."""
        if not lease.lost:
            lease.lost = True
            self.lost_total += 1
        lease._stop(StopReason.LEASE_LOST)
