"""A watchdog outside the event loop: a blocked loop is found, explained, and ended.

One coroutine can stop every task and every lease renewal by blocking the loop
(`time.sleep`, a CPU loop, a synchronous driver call). Nothing inside the loop can notice,
so a daemon thread watches a heartbeat the loop writes every `watchdog_s / 4`. When the
heartbeat is older than `watchdog_s` the thread:

1. dumps every thread's stack to stderr with `faulthandler` (one write, works even if
   logging is wedged), and logs one error event with the stacks as text and the names
   of the tasks that were running;
2. records a strike against the task that blocked the loop (the running task whose code
   is on the loop thread's stack; all running tasks if that cannot be told), through a
   short-lived engine driven by an event loop of its own in a helper thread (the
   service's engine belongs to the blocked loop), with the store's `strike` verb: a task
   that reaches `quarantine_strikes` is quarantined there, by the same rule as repeated
   timeouts. This step is bounded by `strike_timeout_s`: a database outage must not keep
   a wedged process alive;
3. exits with code 70 (`EX_SOFTWARE`) via `os._exit`, so systemd restarts the service.
   Leases of the runs in flight expire and other workers take them over (`abandoned`).

A process that was suspended as a whole (SIGSTOP, a VM pause) is not a blocked loop: the
watchdog thread notices its own sleep overran and gives the loop a fresh window.
Optionally `faulthandler.dump_traceback_later` is re-armed from the loop as a backstop for
a stall that holds the GIL (a long C call), where no Python thread can run.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from types import CodeType, FrameType
from typing import Any, TextIO

import structlog

from cronloop import exitcodes
from cronloop.store.interface import Store
from cronloop.systemd.logs import short_error as _short

log = structlog.get_logger("cronloop.watchdog")

STACKS_MAX_CHARS = 20_000  # one log event, not a novel: the faulthandler dump has the rest

StallHandler = Callable[[list[str], float], None]
# a store of its own for the strike, opened and closed on the watchdog's private loop
# (the service's engine belongs to the blocked loop): `cronloop.store.sql.short_lived_store`
StoreOpener = Callable[[], AbstractAsyncContextManager[Store]]


class LoopWatchdog:
    """Exits the process when the event loop stops beating for `watchdog_s` seconds.

    `running_tasks` is read from the watchdog thread: it must not touch asyncio objects
    (the supervisor keeps a plain tuple of names for it). `code_of` maps a task name to
    its function's code object, so the culprit can be told from bystanders; `on_stall`
    gets the culprits and the stall's length. `clock`, `exit_fn` and `dump_file` are
    injectable so unit tests run without threads, sleeps or dying.
    """

    def __init__(
        self,
        watchdog_s: float,
        *,
        running_tasks: Callable[[], Sequence[str]],
        on_stall: StallHandler | None = None,
        code_of: Callable[[str], CodeType | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        exit_fn: Callable[[int], Any] = os._exit,
        dump_file: TextIO | None = None,
        strike_timeout_s: float = 5.0,
        backstop: bool = False,
    ) -> None:
        if watchdog_s <= 0:
            raise ValueError("watchdog_s must be > 0")
        self.watchdog_s = watchdog_s
        self.running_tasks = running_tasks
        self.on_stall = on_stall
        self.code_of = code_of
        self.clock = clock
        self.exit_fn = exit_fn
        self.dump_file = dump_file
        self.strike_timeout_s = strike_timeout_s
        self.backstop = backstop
        self.fired = False
        self._last_beat = clock()
        self._last_check = self._last_beat
        self._loop_thread: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval_s(self) -> float:
        """How often the loop beats: four beats per window, so one late beat is harmless."""
        return self.watchdog_s / 4

    @property
    def check_every_s(self) -> float:
        return min(self.interval_s, 1.0)

    # -- the loop's side ------------------------------------------------------------

    def heartbeat(self) -> None:
        """Called from the loop: a float store, nothing more (atomic under the GIL)."""
        self._last_beat = self.clock()
        if self._loop_thread is None:
            self._loop_thread = threading.get_ident()

    def beat_age_s(self) -> float:
        """How long ago the loop last beat (for /healthz)."""
        return max(0.0, self.clock() - self._last_beat)

    async def beat(self) -> None:
        """The loop's side, as a side loop of the supervisor; runs until cancelled."""
        self._loop_thread = threading.get_ident()
        try:
            while True:
                self.heartbeat()
                if self.backstop:
                    # 2 windows: the thread above gets the first word when it can run
                    faulthandler.dump_traceback_later(self.watchdog_s * 2, exit=True)
                await asyncio.sleep(self.interval_s)
        finally:
            if self.backstop:
                faulthandler.cancel_dump_traceback_later()

    # -- the thread's side ------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cronloop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.check_every_s):
            if self.check():
                return

    def check(self) -> bool:
        """One look at the heartbeat; fires (and returns True) if the loop is stalled."""
        now = self.clock()
        if now - self._last_check > self.check_every_s * 2 + 1.0:
            # this thread did not run either: the whole process was suspended. Give the
            # loop a full window from now rather than blaming it for the pause.
            self._last_beat = max(self._last_beat, now)
        self._last_check = now
        stalled_s = now - self._last_beat
        if stalled_s < self.watchdog_s or self.fired:
            return False
        self.fire(stalled_s)
        return True

    def fire(self, stalled_s: float) -> None:
        """Report the stall, strike the culprit, exit 70. Never raises before the exit."""
        self.fired = True
        try:
            self._report(stalled_s)
        finally:
            self.exit_fn(exitcodes.SOFTWARE)

    def _report(self, stalled_s: float) -> None:
        running = _safe_names(self.running_tasks)
        frames = sys._current_frames()
        culprits = self.culprits(running, frames.get(self._loop_thread or -1))
        self._dump()
        # logging must not stand between a wedged process and its exit
        _log_error(
            "event loop blocked; exiting so the service restarts",
            stalled_s=round(stalled_s, 1),
            watchdog_s=self.watchdog_s,
            running_tasks=running,
            blamed=culprits,
            stacks=format_stacks(frames),
        )
        if culprits and self.on_stall is not None:
            run_bounded(
                lambda: self.on_stall(culprits, stalled_s) if self.on_stall else None,
                self.strike_timeout_s,
                "recording the strike",
            )

    def culprits(self, running: list[str], loop_frame: FrameType | None) -> list[str]:
        """The running tasks whose code is on the loop thread's stack; if none can be
        pinned down that way, all running tasks (a strike each)."""
        if self.code_of is None or loop_frame is None:
            return running
        on_stack = {f.f_code for f in _walk(loop_frame)}
        found = [name for name in running if _code(self.code_of, name) in on_stack]
        return found or running

    def _dump(self) -> None:
        target = self.dump_file or sys.stderr
        try:
            target.flush()
            faulthandler.dump_traceback(file=target, all_threads=True)
        except Exception:  # no file descriptor (captured stderr): try the real one
            with contextlib.suppress(Exception):
                faulthandler.dump_traceback(file=sys.__stderr__ or 2, all_threads=True)


def _walk(frame: FrameType | None) -> list[FrameType]:
    out = []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return out


def _code(code_of: Callable[[str], CodeType | None], name: str) -> CodeType | None:
    try:
        return code_of(name)
    except Exception:
        return None


def _safe_names(running_tasks: Callable[[], Sequence[str]]) -> list[str]:
    try:
        return sorted(set(running_tasks()))
    except Exception:
        return []


def format_stacks(frames: Mapping[int, FrameType]) -> str:
    """Every thread's stack as text, named, most recent call last, truncated to a size
    a log line can carry."""
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in frames.items():
        stack = "".join(traceback.format_stack(frame))
        parts.append(f"Thread {names.get(ident, '?')} ({ident}):\n{stack}")
    text_ = "\n".join(parts)
    if len(text_) > STACKS_MAX_CHARS:
        text_ = text_[:STACKS_MAX_CHARS] + "\n... (truncated; see the faulthandler dump)"
    return text_


def run_bounded(action: Callable[[], Any], timeout_s: float, what: str) -> bool:
    """Run `action` in a daemon thread, wait at most `timeout_s`; log failures. True if
    it completed without error in time."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            action()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=target, name="cronloop-watchdog-strike", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if not outcome:
        _log_error(f"{what} took longer than {timeout_s:g}s; exiting without it")
        return False
    if outcome[0] is not None:
        _log_error(f"{what} failed; exiting anyway", error=_short(outcome[0]))
        return False
    return True


def _log_error(event: str, **kw: Any) -> None:
    with contextlib.suppress(Exception):
        log.error(event, **kw)


# -- strikes and quarantine, through the store on a private event loop --------------


def strike_tasks_sync(
    open_store: StoreOpener, names: Sequence[str], reason: str, quarantine_strikes: int
) -> list[str]:
    """Add a strike to each task; quarantine those that reached `quarantine_strikes`
    (the store's `strike`: only active tasks, "blocked the event loop for 31 s, 2
    strikes"). Returns the names quarantined now.

    Called from a thread that has no event loop while the service's loop is blocked: it
    runs its own loop with a store `open_store` makes for it (its waits bounded).
    """
    if not names:
        return []

    async def strike() -> list[str]:
        async with open_store() as store:
            return await store.strike(names, reason, quarantine_strikes)

    return asyncio.run(strike())


def strike_recorder(open_store: StoreOpener, quarantine_strikes: int) -> StallHandler:
    """The `on_stall` callback the service uses: strike the culprits, log the verdict."""

    def record(names: list[str], stalled_s: float) -> None:
        reason = f"blocked the event loop for {stalled_s:.0f} s"
        quarantined = strike_tasks_sync(open_store, names, reason, quarantine_strikes)
        _log_error(
            "strike recorded against the task(s) that blocked the event loop",
            tasks=names,
            quarantined=quarantined or None,
        )

    return record
