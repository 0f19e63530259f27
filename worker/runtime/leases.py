"""Keeps the leases of running tasks alive, and stops a task that cannot keep its lease.

A lease is renewed every `lease_s / 3`. If renewals fail (database unreachable, loop
starved) the task is aborted once a third of the lease is left, measured on this
worker's monotonic clock from the last successful renewal; since that renewal was sent
before the database stamped it, the local view is always the pessimistic one. So a worker
that cannot prove it still owns a run stops it before another worker may take it over.
"""

from __future__ import annotations

import asyncio

import structlog

from cronloop.definitions.context import StopReason
from cronloop.domain.clock import Clock
from cronloop.runtime.dbhealth import DbHealth
from cronloop.runtime.runner import Runner, db_timeout_s
from cronloop.store.sql.claims import TaskStore

log = structlog.get_logger("cronloop.leases")


class LeaseKeeper:
    def __init__(
        self, store: TaskStore, clock: Clock, lease_s: float, health: DbHealth | None = None
    ) -> None:
        self.store = store
        self.clock = clock
        self.lease_s = lease_s
        self.health = health or DbHealth()
        self.renewed_mono: dict[str, float] = {}  # run id -> when its lease was last confirmed
        self._failing_since: float | None = None  # renewals fail: say so once, not every round

    @property
    def interval_s(self) -> float:
        return self.lease_s / 3

    def track(self, runner: Runner, claimed_mono: float) -> None:
        self._confirmed(runner, claimed_mono)

    def _confirmed(self, runner: Runner, sent_mono: float) -> None:
        """The lease was good when `sent_mono` was read: the run may go on until a third
        of the lease is left, which its checkpoints enforce by themselves."""
        self.renewed_mono[runner.claim.run_id] = sent_mono
        runner.signal.lease_valid_until = sent_mono + self.lease_s * 2 / 3

    def forget(self, runner: Runner) -> None:
        self.renewed_mono.pop(runner.claim.run_id, None)

    async def renew(self, runners: list[Runner]) -> None:
        """One round: renew every lease, abort runs whose lease is lost or about to be."""
        if not runners:
            return
        sent_mono = self.clock.monotonic()
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            async with asyncio.timeout(db_timeout_s(self.lease_s)):
                lost = await self.store.renew([r.claim for r in runners])
        except Exception as exc:
            self.health.failed(exc)
            if self._failing_since is None:
                self._failing_since = sent_mono
                log.warning("lease renewal failed", error=repr(exc), runs=len(runners))
            self._abort_expiring(runners)
            return
        self.health.ok()
        if self._failing_since is not None:
            log.info(
                "lease renewal works again", failed_s=round(sent_mono - self._failing_since, 1)
            )
            self._failing_since = None
        for runner in runners:
            if runner.claim.run_id not in self.renewed_mono:
                continue  # it ended during the round
            if runner.claim.run_id in lost and runner.recording:
                continue  # its own write just cleared the token (and that write is fenced)
            if runner.claim.run_id in lost:
                runner.log.error("lease lost: another worker may own this task now; stopping it")
                runner.abort(StopReason.LEASE_LOST)
            else:
                self._confirmed(runner, sent_mono)

    def _abort_expiring(self, runners: list[Runner]) -> None:
        now = self.clock.monotonic()
        for runner in runners:
            if runner.recording:
                continue  # its task has ended; its (fenced) write is retried until it lands
            age = now - self.renewed_mono.get(runner.claim.run_id, now)
            if age >= self.lease_s * 2 / 3:
                runner.log.error(
                    "cannot renew the lease; stopping the task before it expires",
                    lease_age_s=round(age, 3),
                )
                runner.abort(StopReason.LEASE_LOST)
