"""APScheduler's side of the single-worker scenarios (lateness, scale, idle, burst,
memory), on the driver `bench.drivers.apscheduler`.

    python -m bench.scenarios.apscheduler lateness --url U --async-url AU --sync-url SU \\
        --params '{"tasks": 1000}' --out result.json --workdir /tmp/w
"""

from __future__ import annotations

import asyncio
import math
import pickle
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.job import Job
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger
from apscheduler.util import datetime_to_utc_timestamp

from bench.child import ChildArgs, ChildResult, child_main
from bench.drivers.apscheduler import (
    DAY,
    JOB_DEFAULTS,
    TICK,
    Probe,
    Recorder,
    Window,
    add_interval_jobs,
    job_id,
    set_up,
    sleep_until,
    stop,
    tick,
    wait_until,
)
from bench.measure import StatementCounter, lateness_figures, percentile, rss_mb

# -- lateness (and scale, which is lateness over a big table) --------------------------------


def is_due_query(sql: str) -> bool:
    """`SQLAlchemyJobStore.get_due_jobs`: SELECT id, job_state ... WHERE next_run_time <= ?
    ORDER BY next_run_time (get_all_jobs has no WHERE; get_next_run_time no job_state)."""
    return "job_state" in sql and "next_run_time <=" in sql


@dataclass(frozen=True)
class Slots:
    """The scheduled times measured: those of [t0, t0 + duration_s), with the edges put
    half a slot gap early so that float rounding never moves a slot across one."""

    t0: float
    tasks: int
    every_s: float
    duration_s: float

    @property
    def edge(self) -> float:
        return self.every_s / self.tasks / 2

    @property
    def begin(self) -> float:
        return self.t0 - self.edge

    @property
    def end(self) -> float:
        return self.t0 + self.duration_s - self.edge

    def per_job(self, i: int) -> int:
        offset = self.every_s * i / self.tasks
        return max(0, math.ceil((self.end - self.t0 - offset) / self.every_s))

    def expected(self) -> int:
        return sum(self.per_job(i) for i in range(self.tasks))


def pair_lateness(probe: Probe, recorder: Recorder, slots: Slots) -> list[float]:
    """Lateness in ms of the runs scheduled in the window. The k-th start of job i is its
    k-th submitted scheduled time: a job's runs are submitted in order, its scheduled times
    run one after another inside one submission, and max_instances=1 keeps submissions
    apart (a skipped submission is not a SUBMITTED event). Exact however late a run is."""
    samples = []
    for i, scheduled in probe.scheduled.items():
        for slot, start in zip(scheduled, recorder.starts.get(i, []), strict=False):
            if slots.begin <= slot < slots.end:
                samples.append((start - slot) * 1000)
    return samples


async def measure_lateness(args: ChildArgs, extra_rows: int) -> ChildResult:
    p = {
        "tasks": 1000,
        "every_s": 10,
        "duration_s": 60,
        "warmup_s": 5,
        "drain_s": 60,
        **args.params,
    }
    tasks, every_s = int(p["tasks"]), float(p["every_s"])
    result, counter, scheduler, store, probe, recorder = set_up(args, timed=is_due_query)
    if extra_rows:
        result.figures.update(bulk_insert(scheduler, store, tasks, extra_rows, result.notes))
    t0 = time.time() + float(p["warmup_s"])
    result.figures["add_jobs_s"] = round(add_interval_jobs(scheduler, tasks, every_s, t0), 3)
    if time.time() > t0:
        result.notes.append(
            f"adding the jobs overran warmup_s={p['warmup_s']}: "
            "the first slots were due before the scheduler resumed"
        )
    scheduler.resume()
    slots = Slots(t0, tasks, every_s, float(p["duration_s"]))
    window = Window(counter, args.sync_url, probe)
    await sleep_until(slots.begin - 0.2)
    await window.open()
    await sleep_until(slots.end)

    def all_started() -> bool:
        return all(len(recorder.starts.get(i, ())) >= slots.per_job(i) for i in range(tasks))

    if not await wait_until(all_started, slots.end + float(p["drain_s"])):
        result.notes.append(f"gave up waiting {p['drain_s']} s for late runs of the window")
    runs = sum(window.start <= t <= time.time() for t in recorder.all_starts())
    result.figures.update(await window.close(runs))
    await stop(scheduler)
    samples = pair_lateness(probe, recorder, slots)
    result.samples["lateness_ms"] = samples
    result.figures.update(lateness_figures(samples))
    result.figures.update(probe.figures())
    result.figures["lateness_runs"] = len(samples)
    result.figures["not_started"] = slots.expected() - len(samples)
    add_claim_figures(result, counter)
    explain(result, probe, samples)
    result.notes.append(
        "window: from t0 until every run scheduled in [t0, t0+duration_s) "
        "started; runs = job starts in that window; lateness = start - the "
        "scheduled time APScheduler submitted (EVENT_JOB_SUBMITTED)"
    )
    return result


def add_claim_figures(result: ChildResult, counter: StatementCounter) -> None:
    timings = counter.timings_ms
    result.figures["claims"] = len(timings)
    result.figures["claim_p50_ms"] = percentile(timings, 50)
    result.figures["claim_p99_ms"] = percentile(timings, 99)


def explain(result: ChildResult, probe: Probe, samples: list[float]) -> None:
    if probe.missed:
        result.notes.append(
            f"APScheduler skipped {probe.missed} scheduled runs (max_instances reached or misfired)"
        )
    if probe.errors:
        result.notes.append(f"{probe.errors} runs raised")
    if samples and min(samples) < 0:
        result.notes.append(f"negative lateness {min(samples):.3f} ms (clock?)")
    if result.figures.get("not_started"):
        result.notes.append(
            f"{result.figures['not_started']:.0f} runs scheduled in the window never started"
        )


def lateness(args: ChildArgs) -> ChildResult:
    return asyncio.run(measure_lateness(args, extra_rows=0))


# -- scale ------------------------------------------------------------------------------------


def bulk_insert(
    scheduler: AsyncIOScheduler, store: SQLAlchemyJobStore, first: int, count: int, notes: list[str]
) -> dict[str, float]:
    """`count` interval jobs not due for a day, written straight into apscheduler_jobs
    (executemany, 1,000 rows a statement) with the row `SQLAlchemyJobStore.add_job` would
    write: a real `Job`, its `__getstate__()` pickled at the store's protocol. Then every
    row is loaded back through the store, to show APScheduler accepts them."""
    began = time.perf_counter()
    start = datetime.now(UTC) + DAY
    trigger = IntervalTrigger(seconds=3600, start_date=start, timezone=UTC)
    rows: list[dict[str, Any]] = []
    with store.engine.begin() as conn:
        for i in range(first, first + count):
            job = Job(
                scheduler,
                id=job_id(i),
                func=TICK,
                args=(i,),
                kwargs={},
                name="tick",
                trigger=trigger,
                executor="default",
                next_run_time=start,
                **JOB_DEFAULTS,
            )
            rows.append(
                {
                    "id": job.id,
                    "next_run_time": datetime_to_utc_timestamp(start),
                    "job_state": pickle.dumps(job.__getstate__(), store.pickle_protocol),
                }
            )
            if len(rows) == 1000 or i == first + count - 1:
                conn.execute(store.jobs_t.insert(), rows)
                rows = []
    inserted = time.perf_counter() - began
    began = time.perf_counter()
    loaded = store.get_all_jobs()
    load_s = time.perf_counter() - began
    good = sum(job.func is tick and job.next_run_time == start for job in loaded)
    if good != count:
        raise RuntimeError(f"APScheduler loaded {good} of {count} bulk-inserted jobs")
    notes.append(
        f"scale: {count} far-future jobs bulk-inserted in {inserted:.1f} s; "
        f"get_all_jobs() loaded all {count} back in {load_s:.1f} s"
    )
    return {"bulk_insert_s": round(inserted, 3), "load_all_s": round(load_s, 3)}


def scale(args: ChildArgs) -> ChildResult:
    p = {"rows": 100_000, "tasks": 1000, **args.params}
    return asyncio.run(measure_lateness(args, extra_rows=int(p["rows"]) - int(p["tasks"])))


# -- burst ------------------------------------------------------------------------------------


def seconds_per_add(scheduler: AsyncIOScheduler, n: int) -> float:
    """Time `n` throw-away adds (then removed), to choose a lead long enough for all."""
    far = datetime.now(UTC) + DAY
    began = time.perf_counter()
    for i in range(n):
        scheduler.add_job(
            TICK, DateTrigger(run_date=far, timezone=UTC), args=(-1,), id=f"calibrate{i}"
        )
    taken = time.perf_counter() - began
    scheduler.remove_all_jobs()
    return taken / n


async def measure_burst(args: ChildArgs) -> ChildResult:
    p = {"runs": 10_000, "timeout_s": 600, **args.params}
    runs = int(p["runs"])
    result, counter, scheduler, _store, probe, recorder = set_up(args)
    lead = float(p.get("lead_s") or 3 + 1.2 * runs * seconds_per_add(scheduler, min(200, runs)))
    due = time.time() + lead
    due_at = datetime.fromtimestamp(due, UTC)
    began = time.perf_counter()
    for i in range(runs):
        scheduler.add_job(
            TICK, DateTrigger(run_date=due_at, timezone=UTC), args=(i,), id=job_id(i), name="tick"
        )
    result.figures["add_jobs_s"] = round(time.perf_counter() - began, 3)
    result.figures["lead_s"] = round(lead, 3)
    window = Window(counter, args.sync_url, probe)
    t = due_at.timestamp()
    if time.time() > t - 0.5:
        # Too late to open the window before T: open it now, and the burst begins when the
        # resume()'s wake-up finds every job overdue.
        await window.open()
        t = time.time()
        scheduler.resume()
        result.notes.append(
            f"adding overran the lead ({lead:.1f} s): the burst starts when the "
            "scheduler resumed, not at the jobs' run_date"
        )
    else:
        scheduler.resume()
        await sleep_until(t - 0.2)
        await window.open()
    completed = await wait_until(lambda: recorder.count >= runs, t + float(p["timeout_s"]))
    if not completed:
        result.notes.append(f"timeout: {recorder.count} of {runs} runs after {p['timeout_s']} s")
    result.figures.update(await window.close(recorder.count))
    await stop(scheduler)
    starts = recorder.all_starts()
    if starts:
        last = recorder.last_end or max(starts)
        result.figures.update(
            {
                "first_start_ms": (min(starts) - t) * 1000,
                "last_start_ms": (max(starts) - t) * 1000,
                "runs_per_s": len(starts) / (last - t),
            }
        )
    result.figures.update(probe.figures())
    explain(result, probe, [])
    if probe.wakeup_ms and starts:
        result.notes.append(
            f"{len(probe.wakeup_ms)} wake-up(s); the longest blocked the event loop "
            f"{max(probe.wakeup_ms) / 1000:.1f} s (a DELETE transaction per job) and no job "
            f"started before it returned; then all started within "
            f"{(max(starts) - min(starts)) * 1000:.0f} ms"
        )
    result.notes.append(
        "burst: jobs added while the scheduler is paused, each a DateTrigger at "
        "T = now + lead (lead from timing 200 throw-away adds); resumed before T, "
        "so the scheduler's own timer fires them; runs_per_s = runs / (last end "
        "- T)"
    )
    return result


def burst(args: ChildArgs) -> ChildResult:
    return asyncio.run(measure_burst(args))


# -- idle -------------------------------------------------------------------------------------


async def measure_idle(args: ChildArgs) -> ChildResult:
    p = {"tasks": 1000, "duration_s": 60, "every_s": 60, **args.params}
    result, counter, scheduler, _store, probe, recorder = set_up(args)
    add_interval_jobs(scheduler, int(p["tasks"]), float(p["every_s"]), time.time() + 86_400)
    scheduler.resume()
    await asyncio.sleep(1)  # the resume's wake-up
    window = Window(counter, args.sync_url, probe)
    await window.open()
    await asyncio.sleep(float(p["duration_s"]))
    result.figures.update(await window.close(recorder.count))
    result.figures["statements_per_min"] = (
        60 * result.figures["statements"] / (window.end - window.start)
    )
    result.figures.update(probe.figures())
    await stop(scheduler)
    result.notes.append(
        "idle: APScheduler sleeps on one timer until the earliest next_run_time "
        "(a day ahead), so it neither polls nor queries while idle"
    )
    return result


def idle(args: ChildArgs) -> ChildResult:
    return asyncio.run(measure_idle(args))


# -- memory -----------------------------------------------------------------------------------


async def measure_memory(args: ChildArgs) -> ChildResult:
    p = {
        "runs": 100_000,
        "tasks": 1000,
        "every_s": 0.25,
        "timeout_s": 900,
        "warmup_s": 3,
        **args.params,
    }
    runs, tasks, every_s = int(p["runs"]), int(p["tasks"]), float(p["every_s"])
    result, counter, scheduler, _store, probe, recorder = set_up(args, keep=False)
    recorder.target, recorder.reached, recorder.rss_at = runs, asyncio.Event(), 1000
    t0 = time.time() + float(p["warmup_s"])
    add_interval_jobs(scheduler, tasks, every_s, t0)
    scheduler.resume()
    window = Window(counter, args.sync_url, probe)
    await sleep_until(t0 - 0.2)
    await window.open()
    try:
        await asyncio.wait_for(recorder.reached.wait(), float(p["timeout_s"]))
    except TimeoutError:
        result.notes.append(f"timeout: {recorder.count} of {runs} runs in {p['timeout_s']} s")
    end_rss = rss_mb()
    reached = recorder.reached_at or time.time()
    result.figures.update(await window.close(recorder.count))
    await stop(scheduler)
    after = recorder.rss_sample
    if after is not None:
        result.figures.update(
            {"rss_after_1000_mb": after, "rss_growth_pct": 100 * (end_rss - after) / after}
        )
    result.figures.update(
        {
            "rss_end_mb": end_rss,
            "elapsed_s": reached - t0,
            "runs_per_s_needed": tasks / every_s,
            "runs_per_s": min(recorder.count, runs) / (reached - t0),
            "lag_max_s": probe.max_lag_s,
        }
    )
    result.figures.update(probe.figures())
    explain(result, probe, [])
    if probe.max_lag_s > max(1.0, every_s):
        result.notes.append(
            f"APScheduler fell behind (up to {probe.max_lag_s:.1f} s late); with "
            "coalesce=False each late job runs all its missed times in one task"
        )
    return result


def memory(args: ChildArgs) -> ChildResult:
    return asyncio.run(measure_memory(args))


SCENARIOS = {"lateness": lateness, "burst": burst, "idle": idle, "memory": memory, "scale": scale}

if __name__ == "__main__":
    child_main(SCENARIOS)
