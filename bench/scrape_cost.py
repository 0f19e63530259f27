"""What /metrics costs: CPU per scrape and per run event, for N tasks, in one process.

Builds the worker's metrics (`cronloop.web.metrics.Metrics`) over the in-memory store
with N tasks that have all run (a success each, a failure for one in ten: the scrape of
a busy worker), then measures:

- `scrape_cpu_ms`: process CPU time of one `exposition()` (the text /metrics answers),
  median of `--repeat` scrapes;
- `scrape_wall_ms`: its wall time (longer than the CPU: the thread pauses to let the
  loop take the GIL), and `longest_hold_ms`: the longest stretch the scrape thread
  worked without a pause (what a loop callback may wait for the GIL, about);
- `event_us`: CPU time of one run's two events (`run_started` + `run_ended`), what the
  hot path pays per run with the server on;
- the size of the answer (lines, bytes).

    python -m bench.scrape_cost                 # 1,000 tasks
    python -m bench.scrape_cost --tasks 10000 --repeat 5

No timing target lives here (see bench/README.md, the `+http` pair, for what the hot
path shows); on a shared machine note the load average beside the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from datetime import timedelta

from cronloop.domain.clock import FakeClock
from cronloop.domain.outcome import Outcome
from cronloop.domain.records import TaskDeclaration
from cronloop.runtime.dbhealth import DbHealth
from cronloop.store.memory import MemoryStore
from cronloop.store.sql.errors import classify
from cronloop.web.metrics import Metrics
from cronloop.web.pacing import Pacer
from cronloop.web.table import TableReader
from cronloop.web.view import WorkerView

EVENTS_PER_TASK = 20


async def _no_schema_change() -> bool:
    return True


def _view(store: MemoryStore, clock: FakeClock, names: list[str]) -> WorkerView:
    periods = dict.fromkeys(names, 10.0)
    return WorkerView(
        store=store,
        health=DbHealth(clock, lambda: 5.0, classify),
        clock=clock,
        running=lambda: names[:5],
        periods=lambda: periods,
        leases_lost=lambda: 0,
        draining=lambda: False,
        heartbeat_age_s=lambda: 0.0,
        heartbeat_limit_s=30.0,
        schema_current=_no_schema_change,
        sessions=None,
        wake=lambda: None,
    )


async def measure(tasks: int, repeat: int) -> dict[str, float]:
    clock = FakeClock()
    store = MemoryStore()
    names = [f"task_{i:05d}" for i in range(tasks)]
    first = clock.now() + timedelta(seconds=5)
    await store.sync_tasks([TaskDeclaration(n, "every 10s", 10, first) for n in names])
    view = _view(store, clock, names)
    table = TableReader(view)
    await table.refresh()
    metrics = Metrics(view, table)
    metrics.prepare(names)
    t0 = time.process_time()
    for i, name in enumerate(names):
        for _ in range(EVENTS_PER_TASK // 2):
            metrics.run_started(name, 0.002)
            metrics.run_ended(name, Outcome.SUCCESS, 0.03)
        if i % 10 == 0:
            metrics.run_ended(name, Outcome.FAILED, 1.5)
    event_s = (time.process_time() - t0) / (tasks * EVENTS_PER_TASK // 2)
    body = await metrics.exposition()  # warm-up
    cpu_s, wall_s, hold_s = [], [], []
    for _ in range(repeat):
        pacer = Pacer()
        c0, w0 = time.process_time(), time.perf_counter()
        body = await metrics.exposition(pacer)
        cpu_s.append(time.process_time() - c0)
        wall_s.append(time.perf_counter() - w0)
        hold_s.append(pacer.longest_s)
    return {
        "tasks": tasks,
        "scrape_cpu_ms": round(statistics.median(cpu_s) * 1000, 1),
        "scrape_cpu_ms_min": round(min(cpu_s) * 1000, 1),
        "scrape_wall_ms": round(statistics.median(wall_s) * 1000, 1),
        "longest_hold_ms": round(statistics.median(hold_s) * 1000, 2),
        "event_us": round(event_s * 1e6, 2),
        "lines": body.count(b"\n"),
        "bytes": len(body),
        "load_1m": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.tasks, args.repeat))))


if __name__ == "__main__":
    main()
