"""Keeps the leases of running tasks alive, and stops a task that cannot keep its lease.

A lease is renewed every `lease_s / 3`. If renewals fail (database unreachable, loop
starved) the task is aborted once a third of the lease is left, measured on this
worker's monotonic clock from the last successful renewal; since that renewal was sent
before the database stamped it, the local view is always the pessimistic one. So a worker
that cannot prove it still owns a run stops it before another worker may take it over.
"""

from __future__ import annotations

import structlog

from worker.clock import Clock
from worker.context import StopReason
from worker.runner import Runner
from worker.store import TaskStore

log = structlog.get_logger("cronloop.leases")


class LeaseKeeper:
    def __init__(self, store: TaskStore, clock: Clock, lease_s: float) -> None:
        self.store = store
        self.clock = clock
        self.lease_s = lease_s
        self.renewed_mono: dict[str, float] = {}  # run id -> when its lease was last confirmed

    @property
    def interval_s(self) -> float:
        return self.lease_s / 3

    def track(self, runner: Runner, claimed_mono: float) -> None:
        self.renewed_mono[runner.claim.run_id] = claimed_mono

    def forget(self, runner: Runner) -> None:
        self.renewed_mono.pop(runner.claim.run_id, None)

    async def renew(self, runners: list[Runner]) -> None:
        """One round: renew every lease, abort runs whose lease is lost or about to be."""
        if not runners:
            return
        sent_mono = self.clock.monotonic()
        try:
            lost = await self.store.renew([r.claim for r in runners])
        except Exception as exc:
            log.warning("lease renewal failed", error=repr(exc), runs=len(runners))
            self._abort_expiring(runners)
            return
        for runner in runners:
            if runner.claim.run_id in lost:
                runner.log.error("lease lost: another worker may own this task now; stopping it")
                runner.abort(StopReason.LEASE_LOST)
            else:
                self.renewed_mono[runner.claim.run_id] = sent_mono

    def _abort_expiring(self, runners: list[Runner]) -> None:
        now = self.clock.monotonic()
        for runner in runners:
            age = now - self.renewed_mono.get(runner.claim.run_id, now)
            if age >= self.lease_s * 2 / 3:
                runner.log.error(
                    "cannot renew the lease; stopping the task before it expires",
                    lease_age_s=round(age, 3),
                )
                runner.abort(StopReason.LEASE_LOST)
