"""The loop, and only the loop: claim what is due, start runners, hear how they ended.

It wakes at the earliest next run (so a due task starts within milliseconds), but at
least every `poll_interval` so that pauses, triggers and other workers' changes are seen.
Each run reports its end (`RunEnd`); leases are the `LeaseKeeper`'s, database failures
the `DbHealth` policy's, stragglers `Stragglers`', signals, drain phases and lifetime
`Control`'s, the STATUS line `StatusLine`'s. It never holds SQL text nor times a run.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from cronloop import exitcodes
from cronloop.config.settings import Settings
from cronloop.definitions.registry import Registry
from cronloop.domain.clock import Clock
from cronloop.domain.records import Claim
from cronloop.runtime.control import Control, Lifetime
from cronloop.runtime.jobs import JobSide
from cronloop.runtime.leases import LeaseKeeper
from cronloop.runtime.runner import RunEnd, RunEnvironment, Runner
from cronloop.runtime.status import StatusLine
from cronloop.runtime.stragglers import Stragglers
from cronloop.runtime.task_side import TaskSide

log = structlog.get_logger("cronloop.supervisor")

REAP_EVERY_LEASES = 10


@dataclass
class Hooks:
    """Optional observers (systemd notifications, tests); all default to no-ops."""

    on_ready: Callable[[], None] = lambda: None
    on_status: Callable[[str], None] = lambda text: None
    on_stopping: Callable[[], None] = lambda: None
    on_tick: Callable[[], None] = lambda: None  # the loop made progress (watchdog)
    on_reloading: Callable[[], None] = lambda: None
    on_reloaded: Callable[[], None] = lambda: None
    max_sleep_s: float | None = None  # wake at least this often (systemd watchdog pings)


# Given the running settings, load and apply new ones (SIGHUP); None if rejected.
Reloader = Callable[[Settings], Awaitable[tuple[Settings, Registry] | None]]


@dataclass
class Supervisor:
    registry: Registry
    env: RunEnvironment
    once: bool = False
    hooks: Hooks = field(default_factory=Hooks)
    reloader: Reloader | None = None
    # more side loops to supervise, e.g. the loop watchdog's heartbeat
    side_loops: list[tuple[str, Callable[[], Awaitable[None]]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.clock: Clock = self.env.clock
        self.store = self.env.store
        self.health = self.env.health  # the one owner of database-error policy
        self.control = Control()
        self.stop_event = self.control.stop_event
        self.reload_event = self.control.reload_event
        self.abort_event = self.control.abort_event
        self.wake_event = self.control.wake_event
        self.runners: dict[str, Runner] = {}
        # the periodic tasks' claims and the runs claimed ahead (runtime/task_side.py)
        self.tasks = TaskSide(self.store, self.health, self.clock, lambda: self.settings)
        # names of running tasks as a plain tuple: the watchdog thread reads it
        self.running_names: tuple[str, ...] = ()
        self._names_stale = False
        self._tasks: set[asyncio.Future[RunEnd]] = set()
        self.leases = LeaseKeeper(self.store, self.clock, self.settings.lease_s, self.health)
        self.stragglers = Stragglers(
            self.store, self.leases, self.health, self.control.spawn, self._snapshot_running
        )
        self.status = StatusLine(self.clock, self.hooks.on_status)
        # queued jobs fill the slots tasks leave free (runtime/jobs.py)
        self.jobs = JobSide(self.registry.jobs, self.store, self.env, self.wake_event.set)
        # the loop may be in a long backoff when the database comes back
        self.health.on_recovered(self.wake_event.set)
        self.executed = 0

    @property
    def settings(self) -> Settings:
        """The settings in force; a SIGHUP reload swaps them in `env` for every new run."""
        return self.env.settings

    @property
    def exit_code(self) -> int:
        return self.control.exit_code

    def request_stop(self, code: int = exitcodes.OK) -> None:
        """First request drains; a second one cancels running tasks at once."""
        self.control.request_stop(code)

    def install_signal_handlers(self) -> None:
        self.control.install_signal_handlers()

    # -- the loop ------------------------------------------------------------------------

    async def run(self) -> int:
        settings = self.settings
        lifetime = Lifetime(
            self.clock, settings.max_lifetime, settings.lifetime_jitter_s, once=self.once
        )
        lifetime_s = lifetime.seconds
        self.tasks.once_cutoff = self.clock.now() if self.once else None
        log.info(
            "worker started",
            worker=self.store.worker_id,
            tasks=len(self.registry),
            max_concurrency=self.settings.max_concurrency,
            max_lifetime_s=round(lifetime_s, 1) if lifetime_s else None,
            once=self.once or None,
        )
        self.hooks.on_ready()
        side = [
            asyncio.create_task(self.control.supervised(name, loop), name=name)
            for name, loop in (
                ("lease keeper", self.leases.run),
                ("job lease keeper", self.jobs.leases.run),
                ("job housekeeping", self.jobs.housekeeping),
                ("housekeeping", self._housekeeping_loop),
                *self.side_loops,
            )
        ]
        try:
            while not self.stop_event.is_set():
                if lifetime.reached():
                    log.info(
                        "max lifetime reached; draining for a planned restart",
                        lifetime_s=round(lifetime_s, 1),
                    )
                    self.request_stop(exitcodes.TEMPFAIL)
                    break
                if self.reload_event.is_set():
                    await self._reload()
                try:
                    idle = await self._tick()
                except Exception:  # a bug (the policy raises nothing else): exit 70
                    log.exception("the loop crashed; stopping the worker")
                    self.control.crashed()
                    break
                if self.once and idle and not self.runners and not self.tasks.planned:
                    break
                await self._sleep(lifetime.remaining_s())
            await self._drain()
        finally:
            await self.control.stop_side_loops(side)
            await self.stragglers.release_all()
            await self.store.close()  # the loop's probe connection
        log.info("worker stopped", exit_code=self.exit_code, runs=self.executed)
        return self.exit_code

    async def _tick(self) -> bool:
        """Claim and start what is due, tasks first, then jobs in the slots left.
        Returns True if nothing was due."""
        idle = await self._tick_tasks()
        free = self.settings.max_concurrency - len(self.runners) - len(self.tasks.planned)
        runners = await self.jobs.acquire(free)
        for runner in runners:
            self._launch(runner)
        if runners:
            self._snapshot_running()
        return idle and not runners

    async def _tick_tasks(self) -> bool:
        self.hooks.on_tick()
        # cleared before claiming, so a run that ends from here on wakes the next sleep
        self.wake_event.clear()
        for claim, claimed_mono in self.tasks.pop_due():  # claimed ahead, now due
            self._start(claim, claimed_mono)
        turn = await self.tasks.turn(len(self.runners))
        for claim, claimed_mono in turn.start:
            self._start(claim, claimed_mono)
        if turn.claimed:
            if self._names_stale:
                self._snapshot_running()
            self.status.report(
                (r.name for r in self.runners.values()),
                self.tasks.due.next_due,
                self.health.down,
            )
        return turn.idle

    def _snapshot_running(self) -> None:
        """The names the watchdog thread reads: running tasks and stuck ones (a straggler
        coroutine can block the loop as well as a running one). Rebuilt once per turn of
        the loop (`_tick`, `_sleep`), not per run: with a thousand runs in flight, a
        rebuild per start and end cost more than the runs. Runs started in a tick are
        in it before any of them executes."""
        self._names_stale = False
        self.running_names = (
            *(r.name for r in self.runners.values()),
            *self.stragglers.names(),
        )

    def _start(self, claim: Claim, claimed_mono: float) -> None:
        spec = self.registry.specs.get(claim.name)
        if spec is None or not spec.runnable:
            log.warning("claimed a task this worker cannot run; releasing it", task=claim.name)
            release = functools.partial(self.store.release, claim)
            self.control.spawn(self.health.call_quietly(release, "releasing"))
            return
        self._launch(Runner(spec, claim, self.env, self.leases.track(claim, claimed_mono)))

    def _launch(self, runner: Runner) -> None:
        self.runners[runner.claim.run_id] = runner
        self._names_stale = True
        task = asyncio.ensure_future(runner.run())
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._finished, runner=runner))

    def _finished(self, task: asyncio.Future[RunEnd], runner: Runner) -> None:
        self._tasks.discard(task)
        self.runners.pop(runner.claim.run_id, None)
        self._names_stale = True
        self.executed += 1
        if task.cancelled() or task.exception() is not None:
            self.leases.forget(runner.claim)
            error = "cancelled" if task.cancelled() else repr(task.exception())
            log.error("runner crashed; stopping the worker", task=runner.name, error=error)
            self.control.crashed()
            return
        end = task.result()
        was_full = len(self.runners) + 1 >= self.settings.max_concurrency
        # --once ends when nothing runs: let it see that now
        if self.tasks.due.ended(end.next_run) or was_full or self.once:
            self.wake_event.set()  # plan the sleep again / use the freed slot
        if end.straggler is not None and not end.straggler.done():
            self.stragglers.keep(runner.claim, runner.name, runner.log, end.straggler)
            if not self.settings.max_lifetime and not self.stop_event.is_set():
                self.request_stop(exitcodes.TEMPFAIL)  # no lifetime boundary: restart now
        else:
            self.leases.forget(runner.claim)

    async def _sleep(self, cap_s: float | None) -> None:
        """Sleep until the next due run, a free slot, a stop, or `poll_interval`."""
        if self._names_stale:
            self._snapshot_running()
        if self.stop_event.is_set():
            return
        if self.health.down:
            delay = self.health.loop_backoff_s(self.settings.poll_interval)
        elif len(self.runners) + len(self.tasks.planned) >= self.settings.max_concurrency:
            delay = self.settings.poll_interval  # until a run ends (wake_event) or starts
        else:
            delay = self.tasks.due.sleep_s(self.clock.now(), self.clock.monotonic())
        start = self.tasks.planned.next_start()
        if start is not None:  # a run claimed ahead starts then
            delay = min(delay, max(0.0, (start - self.clock.now()).total_seconds()))
        free = self.settings.max_concurrency - len(self.runners) - len(self.tasks.planned)
        jobs_cap = self.jobs.sleep_cap_s(free)
        for cap in (cap_s, self.hooks.max_sleep_s, jobs_cap):
            if cap is not None:
                delay = min(delay, cap)
        if delay <= 0:
            await asyncio.sleep(0)
            return
        log.debug("sleeping", seconds=round(delay, 3), running=len(self.runners) or None)
        await self.control.wait_first(
            self.clock.sleep(delay), self.stop_event.wait(), self.wake_event.wait()
        )

    async def _reload(self) -> None:
        """Apply a new configuration between two ticks; a failure keeps the old one."""
        self.reload_event.clear()
        if self.reloader is None:
            log.warning("SIGHUP ignored: this worker was started without a reloader")
            return
        self.hooks.on_reloading()
        try:
            result = await self.reloader(self.settings)
        except Exception:
            log.exception("configuration reload failed; keeping the running configuration")
            result = None
        if result is not None:
            settings, self.registry = result
            self.jobs.use(self.registry.jobs)
            self.env.apply(settings)  # lease_s needs a restart: the keeper keeps its own
            self.tasks.forget()  # and ask again
        self.hooks.on_reloaded()

    # -- database calls -----------------------------------------------------------------

    async def _housekeeping_loop(self) -> None:
        """Close history rows of runs whose worker vanished, off the hot path: at start,
        then every `REAP_EVERY_LEASES` leases. Only tasks nobody claims again (paused,
        removed) need it: a claim that takes a run over closes the old row itself. Rare,
        so that an idle worker stays at one query per poll. (Pruning old history is the
        `history_gc` standard task's job.)"""
        while True:
            await self.health.call_quietly(self.store.reap_abandoned, "reaping")
            await self.clock.sleep(self.settings.lease_s * REAP_EVERY_LEASES)

    async def _drain(self) -> None:
        self.hooks.on_stopping()
        await self.tasks.release_planned()
        if self.runners:
            await self.control.drain(self.runners, self._tasks, self.settings.shutdown_grace)
