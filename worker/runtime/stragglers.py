"""Runs that could not be stopped: their leases are kept until they really end.

A task that ignores cancellation, or a thread (which cannot be killed), goes on after its
run was recorded. Its lease is kept, and renewed by the lease keeper, so no worker starts
it again meanwhile; when it ends at last, the lease is freed. At exit the leases of those
still running are freed too: the process ends, and they end with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from cronloop.domain.records import Claim
from cronloop.runtime.dbhealth import DatabaseFailure, DbHealth
from cronloop.runtime.leases import LeaseKeeper
from cronloop.store.interface import Store

log = structlog.get_logger("cronloop.stragglers")


class Stragglers:
    def __init__(
        self,
        store: Store,
        leases: LeaseKeeper,
        health: DbHealth,
        spawn: Callable[[Awaitable[Any]], None],
        changed: Callable[[], None],
    ) -> None:
        self.store = store
        self.leases = leases
        self.health = health
        self._spawn = spawn  # runs a coroutine in the background, supervised
        self._changed = changed  # the set changed (the watchdog's names)
        self._runs: dict[str, tuple[Claim, str, Any]] = {}  # run id -> claim, name, log

    def __len__(self) -> int:
        return len(self._runs)

    def names(self) -> list[str]:
        return [name for _, name, _ in self._runs.values()]

    def keep(self, claim: Claim, name: str, run_log: Any, straggler: asyncio.Future[Any]) -> None:
        """Hold `claim`'s lease until `straggler` ends."""
        self._runs[claim.run_id] = (claim, name, run_log)
        self._changed()
        run_log.error(
            "task left behind: it could not be stopped; its lease is held until it ends "
            "or this worker restarts",
            stragglers=len(self._runs),
        )
        straggler.add_done_callback(functools.partial(self._ended, run_id=claim.run_id))

    def _ended(self, _fut: asyncio.Future[Any], run_id: str) -> None:
        entry = self._runs.pop(run_id, None)
        if entry is None:
            return
        claim, _, run_log = entry
        self._changed()
        self.leases.forget(claim)
        run_log.warning("left-behind task ended at last; freeing its lease")
        self._spawn(self._free(claim))

    async def _free(self, claim: Claim) -> None:
        # on failure the lease expires by itself; the run is recorded already
        with contextlib.suppress(DatabaseFailure):
            await self.health.call(lambda: self.store.free_lease(claim), what="freeing a lease")

    async def release_all(self) -> None:
        """Free the leases of runs still stuck at exit: the process is about to end (the
        caller exits without waiting for their threads), and the runs end with it."""
        for claim, _, _ in list(self._runs.values()):
            await self._free(claim)
        if self._runs:
            log.error("exiting with tasks that could not be stopped", tasks=sorted(self.names()))
