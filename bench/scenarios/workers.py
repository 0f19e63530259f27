"""The `workers` scenario: several cronloop workers, steady load and a burst.

(A) `workers` processes share `tasks` tasks every `every_s` for `duration_s`; each run
writes a ledger row, from which duplicated and missed slots are counted. (B)
`burst_runs` no-op tasks all due at one instant, drained by 1 worker, then by `workers`
workers: runs/s from the history table `cronloop_run`.

    python -m bench.scenarios.workers workers --url U --async-url AU --sync-url SU \\
        --params '{"workers": 4}' --out result.json --workdir /tmp/x
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench import profile
from bench.child import ChildArgs, ChildResult
from bench.databases import server_cpu_s, server_questions
from bench.drivers.cronloop_fleet import (
    DEFAULT_POLL_S,
    LEDGER,
    SETTLE_S,
    Fleet,
    Setup,
    aware,
    fleet_main,
    from_usec,
    naive,
    now_utc,
    park,
    prepared,
    rows,
    set_due,
    unparked,
    usec,
)
from bench.drivers.task_rows import set_phases
from bench.measure import cpu_ms_per, percentile
from tests.support.worker import WorkerProcess

# -- workers A: steady load, duplicates and missed slots ---------------------------------


@dataclass(frozen=True)
class Window:
    """The slots that are counted: [first, last] in microseconds since the epoch."""

    first: int
    last: int


def expected_slots(phases: dict[str, datetime], period_us: int, window: Window) -> int:
    """How many grid points `phase + k * period` (k >= 0) lie inside the window."""
    total = 0
    for phase in phases.values():
        p = usec(phase)
        k_min = max(0, -(-(window.first - p) // period_us))
        k_max = (window.last - p) // period_us
        total += max(0, k_max - k_min + 1)
    return total


@dataclass(frozen=True)
class Reading:
    """The workers' CPU time and the server's statement counter at one instant."""

    mono: float
    cpu_s: list[float]
    questions: int | None
    db_cpu_s: float | None = None

    @classmethod
    def take(cls, setup: Setup, workers: Sequence[WorkerProcess]) -> Reading:
        return cls(
            time.monotonic(),
            [w.cpu_s() for w in workers],
            server_questions(setup.args.sync_url),
            server_cpu_s(setup.args.sync_url),
        )

    def since(self, before: Reading, runs: int) -> dict[str, float]:
        """Mean CPU per worker (% of one core), CPU per run (all workers; the MariaDB
        server's) and MariaDB statements per run in between (`Questions` and the server's
        CPU are server-wide: anything else using the server inflates them)."""
        wall = self.mono - before.mono
        cpu = sum(b - a for a, b in zip(before.cpu_s, self.cpu_s, strict=True))
        out = {
            "worker_cpu_pct": round(100 * cpu / wall / len(self.cpu_s), 1),
            "cpu_ms_per_run": round(cpu_ms_per(cpu, runs), 3),
        }
        if self.db_cpu_s is not None and before.db_cpu_s is not None:
            out["db_cpu_ms_per_run"] = round(cpu_ms_per(self.db_cpu_s - before.db_cpu_s, runs), 3)
        if self.questions is not None and before.questions is not None and runs:
            out["server_questions_per_run"] = round((self.questions - before.questions) / runs, 1)
        return out


def audit_ledger(
    ledger: list[Any], phases: dict[str, datetime], period_us: int, window: Window
) -> dict[str, int]:
    """Duplicates over every ledger row (a slot executed twice is wrong anywhere);
    missed and off-grid over the window only."""
    seen = Counter((r.task, usec(aware(r.scheduled_for))) for r in ledger)
    done = 0
    off_grid = 0
    for (task, slot), _n in seen.items():
        if not window.first <= slot <= window.last:
            continue
        if (slot - usec(phases[task])) % period_us:
            off_grid += 1
        else:
            done += 1
    expected = expected_slots(phases, period_us, window)
    return {
        "duplicates": sum(n - 1 for n in seen.values() if n > 1),
        "missed": expected - done,
        "slots_expected": expected,
        "slots_off_grid": off_grid,
        "runs": sum(n for (_t, s), n in seen.items() if window.first <= s <= window.last),
        "runs_total": len(ledger),
    }


def steady_load(
    setup: Setup, n_workers: int, count: int, every: float, duration: float
) -> ChildResult:
    """Part A. Workers start with the tasks parked; the tasks are then released with
    phases spread evenly over one period, first slot `t0` = release + poll_interval + 1 s
    (every worker re-reads the table at least once per poll_interval, so all of them know
    the new times before the first slot). After `duration` the workers get SIGTERM.

    Window: [t0, stop - margin], margin = max(2 periods, poll_interval). Nothing needs
    excluding at the start (no slot falls due before every worker is up). At the end a
    slot due just before SIGTERM may not have been claimed yet: that is the shutdown, not
    a missed slot. No worker dies here, so leases never expire and play no part."""
    result = ChildResult()
    period_us = round(every * 1e6)
    margin_s = max(2 * every, DEFAULT_POLL_S)
    with Fleet(setup) as fleet:
        workers = fleet.start_ready(n_workers)
        result.notes += unparked(setup.engine, "steady_%")
        t0 = now_utc() + timedelta(seconds=DEFAULT_POLL_S + SETTLE_S)
        phases = {
            f"steady_{i:05d}": t0 + timedelta(seconds=every * i / count) for i in range(count)
        }
        set_phases(setup.args.sync_url, phases)
        if now_utc() > t0 - timedelta(seconds=SETTLE_S / 2):
            result.notes.append("the release UPDATE took longer than expected")
        sleep_until(t0)
        before = Reading.take(setup, workers)
        sleep_until(t0 + timedelta(seconds=duration))
        after = Reading.take(setup, workers)
        stop_at = now_utc()
        crashed = [
            f"{w.label} (pid {w.pid}) exited {w.proc.poll()} during the run: {w.tail(5)}"
            for w in workers
            if w.proc.poll() is not None
        ]
        result.notes += crashed + fleet.stop()
    window = Window(usec(t0), usec(stop_at) - round(margin_s * 1e6))
    ledger = rows(
        setup.engine, f"SELECT task, scheduled_for, pid FROM {LEDGER} WHERE task LIKE 'steady_%'"
    )
    audit = audit_ledger(ledger, phases, period_us, window)
    result.figures.update(audit)
    per_pid = Counter(r.pid for r in ledger)
    per_worker = [per_pid.get(w.pid, 0) for w in workers]
    for i, n in enumerate(per_worker, 1):
        result.figures[f"runs_worker_{i}"] = n
    result.samples["runs_per_worker"] = [float(n) for n in per_worker]
    result.figures["workers_crashed"] = len(crashed)
    result.figures.update(after.since(before, audit["runs"]))
    result.figures.update(history_checks(setup.engine, window))
    result.notes.append(
        f"steady: {n_workers} workers, {count} tasks every {every:g}s, {duration:g}s; slots "
        f"counted from the first slot to {margin_s:g}s before SIGTERM "
        f"({(window.last - window.first) / 1e6:.1f}s); duplicates over all ledger rows"
    )
    return result


def history_checks(engine: Engine, window: Window) -> dict[str, float]:
    """cronloop's own view of the window: lateness (started - scheduled_for), the slots it
    says it skipped (`missed`), and runs that did not end `success`."""
    first, last = from_usec(window.first), from_usec(window.last)
    hist = rows(
        engine,
        "SELECT scheduled_for, started, outcome, missed FROM cronloop_run "
        "WHERE task_name LIKE 'steady_%' AND scheduled_for BETWEEN :a AND :b",
        a=naive(first),
        b=naive(last),
    )
    late = [
        (r.started - r.scheduled_for).total_seconds() * 1000 for r in hist if r.outcome == "success"
    ]
    return {
        "history_missed": sum(r.missed for r in hist),
        "history_not_success": sum(1 for r in hist if r.outcome != "success"),
        "lateness_p50_ms": round(percentile(late, 50), 1),
        "lateness_p99_ms": round(percentile(late, 99), 1),
        "lateness_max_ms": round(max(late), 1) if late else math.nan,
    }


def sleep_until(at: datetime) -> None:
    delay = (at - now_utc()).total_seconds()
    if delay > 0:
        time.sleep(delay)


# -- workers B: a burst drained by 1 and by n workers -----------------------------------------


@dataclass(frozen=True)
class Burst:
    runs: int
    other: int  # history rows of this slot that did not end `success`
    duplicates: int  # tasks with more than one run for this slot
    rate: float  # successful runs / (last end - due instant)
    cpu_ms_per_run: float  # the workers' CPU time (all of them) per successful run
    db_cpu_ms_per_run: float  # the MariaDB server's, in the same span
    worker_cpu_pct: float  # the workers' CPU, % of one core (all of them)
    db_cpu_pct: float  # the server's
    note: str


def burst(
    setup: Setup, n_workers: int, count: int, flags: Sequence[str], pattern: str = "burst_%"
) -> Burst:
    """All `count` tasks matching `pattern` due at one instant `due`, set once `n_workers`
    idle workers are up; wait until none is left due (or nothing moved for a minute), stop
    the workers, and read this slot's runs from `cronloop_run`. Idle workers re-read the
    table every poll_interval, so `due` = release + poll_interval + 1 s finds them all
    awake. CPU: each worker's and the MariaDB server's, from /proc, due to drained."""
    notes = []
    with Fleet(setup, flags) as fleet:
        started = fleet.start_ready(n_workers)
        notes += unparked(setup.engine, pattern)
        due = now_utc() + timedelta(seconds=DEFAULT_POLL_S + SETTLE_S)
        set_due(setup.engine, pattern, due)
        spy = profile.window(due.timestamp() - 0.05, pid=started[0].pid)
        sleep_until(due)
        before = Reading.take(setup, started)
        db_before = server_cpu_s(setup.args.sync_url)
        if not wait_drained(setup.engine, due, pattern, stall_s=60.0):
            notes.append(f"{n_workers} worker(s): the burst stalled; stopped early")
        after = Reading.take(setup, started)
        db_after = server_cpu_s(setup.args.sync_url)
        profile.finish(spy)
        notes += fleet.stop()
    hist = rows(
        setup.engine,
        "SELECT task_name, ended, outcome, worker FROM cronloop_run "
        "WHERE task_name LIKE :p AND scheduled_for = :d",
        p=pattern,
        d=naive(due),
    )
    ok = [r for r in hist if r.outcome == "success"]
    per_task = Counter(r.task_name for r in hist)
    last_end = max((aware(r.ended) for r in ok), default=due)
    span = (last_end - due).total_seconds()
    shares = sorted(Counter(r.worker for r in ok).values())
    notes.append(
        f"{'no-op' if pattern == 'burst_%' else pattern.rstrip('_%')} burst with "
        f"{n_workers} worker(s): {len(ok)} runs in "
        f"{span:.2f}s, per worker {shares}"
    )
    cpu_s = sum(after.cpu_s) - sum(before.cpu_s)
    db_s = db_after - db_before if db_after is not None and db_before is not None else math.nan
    wall = after.mono - before.mono
    return Burst(
        len(ok),
        len(hist) - len(ok),
        sum(1 for n in per_task.values() if n > 1),
        len(ok) / span if span > 0 else math.nan,
        cpu_ms_per(cpu_s, len(ok)),
        cpu_ms_per(db_s, len(ok)),
        100 * cpu_s / wall,
        100 * db_s / wall,
        "; ".join(notes),
    )


def wait_drained(engine: Engine, due: datetime, pattern: str, stall_s: float) -> bool:
    """Poll (twice a second, on the (status, next_run) index) until no task matching
    `pattern` is still due at `due`: a finished run moves next_run an hour on. False if
    progress stalls."""
    last, moved = -1, time.monotonic()
    with engine.connect() as conn:
        while True:
            left = conn.execute(
                sa.text(
                    "SELECT COUNT(*) FROM cronloop_task WHERE status = 'active' "
                    "AND name LIKE :p AND next_run = :d"
                ),
                {"p": pattern, "d": naive(due)},
            ).scalar_one()
            if left == 0:
                return True
            if left != last:
                last, moved = left, time.monotonic()
            elif time.monotonic() - moved > stall_s:
                return False
            time.sleep(0.5)


def workers(args: ChildArgs) -> ChildResult:
    p = args.params
    n = int(p.get("workers", 4))
    flags = [f"--max_concurrency={p['max_concurrency']}"] if "max_concurrency" in p else []
    with prepared(
        args, "steady", steady=int(p.get("tasks", 200)), every=float(p.get("every_s", 1))
    ) as setup:
        result = steady_load(
            setup,
            n,
            int(p.get("tasks", 200)),
            float(p.get("every_s", 1)),
            float(p.get("duration_s", 60)),
        )
    with prepared(args, "burst", burst=int(p.get("burst_runs", 10_000))) as setup:
        one = burst(setup, 1, int(p.get("burst_runs", 10_000)), flags)
        park(setup.engine, "burst_%")
        many = burst(setup, n, int(p.get("burst_runs", 10_000)), flags)
    figures(result, "burst", one, many)
    if flags:
        result.notes.append(f"no-op burst workers ran with {flags[0]}")
    io_runs = int(p.get("io_runs", 0))
    if io_runs:
        io_s = float(p.get("io_s", 0.1))
        with prepared(args, "io", io=io_runs, io_s=io_s) as setup:
            io_one = burst(setup, 1, io_runs, [], "io_%")
            park(setup.engine, "io_%")
            io_many = burst(setup, n, io_runs, [], "io_%")
        figures(result, "io", io_one, io_many)
        result.notes.append(
            f"io burst: {io_runs} runs each waiting {io_s * 1000:g} ms (asyncio.sleep), "
            "default max_concurrency (10 per worker): a worker's slots, not its CPU, bound it"
        )
    return result


def figures(result: ChildResult, name: str, one: Burst, many: Burst) -> None:
    """`name`_runs_per_s_1 / _n, the scaling, and where the CPU went (workers, MariaDB)."""
    f = result.figures
    f.update(
        {
            f"{name}_runs_per_s_1": round(one.rate, 1),
            f"{name}_runs_per_s_n": round(many.rate, 1),
            f"{name}_scaling": round(many.rate / one.rate, 2),
            f"{name}_done_1": one.runs,
            f"{name}_done_n": many.runs,
            f"{name}_not_success": one.other + many.other,
            f"{name}_duplicates": one.duplicates + many.duplicates,
        }
    )
    for suffix, b in (("1", one), ("n", many)):
        f[f"{name}_cpu_ms_per_run_{suffix}"] = round(b.cpu_ms_per_run, 3)
        f[f"{name}_db_cpu_ms_per_run_{suffix}"] = round(b.db_cpu_ms_per_run, 3)
        f[f"{name}_worker_cpu_pct_{suffix}"] = round(b.worker_cpu_pct, 1)
        f[f"{name}_db_cpu_pct_{suffix}"] = round(b.db_cpu_pct, 1)
    result.notes += [one.note, many.note]


SCENARIOS: dict[str, Callable[[ChildArgs], ChildResult]] = {"workers": workers}

if __name__ == "__main__":
    fleet_main(SCENARIOS)
