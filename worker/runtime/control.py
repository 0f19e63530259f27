"""How the loop is steered from outside and how it stops: signals, stop requests, the
side loops and background calls it supervises.

A signal handler only sets an event; the loop decides what to do. A first stop request
drains, a second one cancels running tasks at once. A side loop or background call that
dies of a bug stops the worker loudly (exit 70) instead of leaving it half alive. It
never knows what the loop does between two events.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog

from cronloop import exitcodes
from cronloop.definitions.context import StopReason
from cronloop.domain.clock import Clock

log = structlog.get_logger("cronloop.supervisor")

SIDE_LOOP_STOP_S = 5.0  # how long a cancelled side loop may take to end, per round


class Stoppable(Protocol):
    """A run, as a drain sees it."""

    log: Any

    def stop(self, reason: StopReason) -> None: ...
    def abort(self, reason: StopReason) -> None: ...


class Control:
    def __init__(self) -> None:
        self.stop_event = asyncio.Event()
        self.reload_event = asyncio.Event()
        self.abort_event = asyncio.Event()
        self.wake_event = asyncio.Event()  # something changed: plan the sleep again
        self.exit_code = exitcodes.OK
        self._background: set[asyncio.Future[None]] = set()

    def request_stop(self, code: int = exitcodes.OK) -> None:
        """First request drains; a second one cancels running tasks at once."""
        if self.stop_event.is_set():
            self.abort_event.set()
            return
        self.exit_code = code
        self.stop_event.set()

    def crashed(self) -> None:
        """A bug: stop now with exit 70, cancelling what runs."""
        self.request_stop(exitcodes.SOFTWARE)
        self.abort_event.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)

    def _on_hangup(self) -> None:
        self.reload_event.set()
        self.wake_event.set()

    def _on_signal(self, signum: int) -> None:
        log.info(
            "signal received",
            signal=signal.Signals(signum).name,
            action="abort" if self.stop_event.is_set() else "drain",
        )
        self.request_stop(exitcodes.OK)

    async def supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run a side loop; if it dies, stop the worker loudly."""
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("side loop crashed; stopping the worker", loop=name)
            self.crashed()

    async def stop_side_loops(
        self, loops: list[asyncio.Task[None]], timeout_s: float = SIDE_LOOP_STOP_S
    ) -> None:
        """Cancel the side loops and wait for them, `timeout_s` at most per round: a loop
        that lost its cancel (a driver turned it into an error it handled) is named and
        cancelled again, so a stop never hangs on it."""
        for attempt in (1, 2):
            for task in loops:
                task.cancel()
            if not loops:
                return
            _, pending = await asyncio.wait(loops, timeout=timeout_s)
            if not pending:
                return
            names = sorted(t.get_name() for t in pending)
            log.error("side loops did not stop when cancelled", loops=names, attempt=attempt)
            loops = list(pending)

    def spawn(self, call: Awaitable[Any]) -> None:
        """Run `call` in the background, supervised like a side loop."""

        async def run() -> None:
            await call

        fut = asyncio.ensure_future(self.supervised("background call", run))
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)

    async def wait_first(self, *aws: Awaitable[object]) -> None:
        """Until the first of `aws` completes; the others are cancelled."""
        futures = [asyncio.ensure_future(a) for a in aws]
        try:
            await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in futures:
                fut.cancel()

    async def drain(
        self, runs: Mapping[str, Stoppable], tasks: set[asyncio.Future[Any]], grace_s: float
    ) -> None:
        """Shutdown in phases: ask `runs` (a live mapping: it shrinks as they end) to stop
        at their next checkpoint, wait `grace_s` (or a second stop request), cancel what
        is left with a reason, and wait until every run recorded its end."""
        log.info("draining", running=len(runs), grace_s=grace_s)
        for run in list(runs.values()):
            run.stop(StopReason.SHUTDOWN)
        await self.wait_for(tasks, grace_s)
        for run in list(runs.values()):
            run.log.warning("still running after the shutdown grace; cancelling it")
            run.abort(StopReason.SHUTDOWN)
        if tasks:
            await asyncio.wait(set(tasks))

    async def wait_for(self, tasks: set[asyncio.Future[Any]], timeout_s: float) -> None:
        """Until every one of `tasks` (a live set: it shrinks as they end) is done, at
        most `timeout_s`, or until a second stop request."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        aborter = asyncio.ensure_future(self.abort_event.wait())
        try:
            while tasks and not self.abort_event.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return
                waiting: set[asyncio.Future[Any]] = {*tasks, aborter}
                await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            aborter.cancel()


class Lifetime:
    """`max_lifetime` plus up to `lifetime_jitter_s`, drawn once at start (so a fleet
    does not restart in step); none for `--once` or `max_lifetime = 0`."""

    def __init__(self, clock: Clock, base_s: float, jitter_s: float, *, once: bool) -> None:
        self.clock = clock
        self.started = clock.monotonic()
        self.seconds = 0.0 if not base_s or once else base_s + random.uniform(0, jitter_s)

    def reached(self) -> bool:
        return bool(self.seconds) and self.clock.monotonic() - self.started >= self.seconds

    def remaining_s(self) -> float | None:
        """Until the end of the lifetime; None without one."""
        if not self.seconds:
            return None
        return max(0.0, self.started + self.seconds - self.clock.monotonic())
