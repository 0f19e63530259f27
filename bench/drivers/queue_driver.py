"""The queue scenarios' procedure, the same for every job queue (cronloop, procrastinate,
arq): the side (bench/scenarios/queue_*.py) says how to enqueue and how its worker is
started; this module enqueues, starts and stops that worker (another process, so its
CPU is its own), and turns the probe's samples (bench/drivers/queue_probe.py) into
figures.

- drain: `jobs` no-op jobs enqueued in batches of `batch` (one transaction or round
  of requests each), no worker running; then one worker drains them. jobs/s = (n - 1)
  / (last start - first start), so the worker's start-up is not counted.
- steady: one idle worker (warmed up with one job); `rate` jobs/s enqueued one at a
  time (each its own transaction) for `duration_s` by `lanes` paced coroutines; latency
  = start - the enqueuer's clock just before the enqueue call (same machine, same
  clock), so it includes the enqueue's own round trip, for every system alike.

CPU per job = the worker's CPU time between the first and the last start / (n - 1).
Knows nothing of any queue's API.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.child import ChildArgs, ChildResult
from bench.drivers import queue_probe
from bench.measure import percentile
from tests.support.worker import WorkerProcess

PROBE_MODULE = "bench_queue_probe"  # the probe's source, copied beside the job module
WARM_UP = -1  # the job number of the steady scenario's warm-up job (not counted)
POLL_S = 0.2  # how often the marker files are looked for


class Enqueuer(Protocol):
    async def batch(self, items: Sequence[dict[str, Any]]) -> None: ...

    async def one(self, item: dict[str, Any]) -> None: ...


class QueueSide(Protocol):
    """One job queue as the bench drives it."""

    label: str
    notes: list[str]

    def prepare(self, workdir: Path, concurrency: int) -> None:
        """Write the job module (importing `PROBE_MODULE`), create the schema."""

    def connected(self) -> AbstractAsyncContextManager[Enqueuer]:
        """The application's side: a connection to enqueue with."""

    def worker(self, env: dict[str, str], log_path: Path) -> WorkerProcess:
        """Start one worker process as users deploy it, with `env` added."""


@dataclass
class Samples:
    starts: list[tuple[int, float, float]] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> Samples:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls([tuple(s) for s in data["starts"]], data["cpu"])  # type: ignore[misc]

    def counted(self) -> list[tuple[int, float, float]]:
        return [s for s in self.starts if s[0] != WARM_UP]

    def audit(self, expected: int) -> dict[str, float]:
        seen = Counter(s[0] for s in self.counted())
        return {
            "jobs": len(seen),
            "duplicates": sum(n - 1 for n in seen.values()),
            "lost": sum(1 for i in range(expected) if i not in seen),
        }

    def cpu_ms_per_job(self) -> float:
        n = len(self.starts)
        return 1000 * (self.cpu[1] - self.cpu[0]) / (n - 1) if n > 1 else float("nan")


def copy_probe(workdir: Path) -> None:
    shutil.copy(queue_probe.__file__, workdir / f"{PROBE_MODULE}.py")


def probe_env(samples: Path, expect: int) -> dict[str, str]:
    return {"BENCH_QUEUE_SAMPLES": str(samples), "BENCH_QUEUE_EXPECT": str(expect)}


def wait_file(path: Path, timeout_s: float, worker: WorkerProcess) -> bool:
    """True once `path` exists; False after `timeout_s` or if the worker died."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline or worker.proc.poll() is not None:
            return False
        time.sleep(POLL_S)
    return True


def stop(worker: WorkerProcess, notes: list[str], timeout_s: float = 60.0) -> None:
    worker.signal(signal.SIGTERM)
    try:
        rc = worker.wait(timeout_s)
    except AssertionError:
        notes.append(f"the worker ignored SIGTERM for {timeout_s:g}s; killed")
        return
    if rc != 0:
        notes.append(f"the worker exited {rc}: {worker.tail(5)}")


def items(numbers: range) -> list[dict[str, Any]]:
    return [{"i": i, "t": time.time()} for i in numbers]


async def enqueue_batches(side: QueueSide, jobs: int, batch: int) -> float:
    """Enqueue `jobs` jobs in batches; seconds taken."""
    async with side.connected() as enq:
        started = time.perf_counter()
        for start in range(0, jobs, batch):
            await enq.batch(items(range(start, min(jobs, start + batch))))
        return time.perf_counter() - started


def drain(side: QueueSide, args: ChildArgs) -> ChildResult:
    p = args.params
    jobs, batch = int(p.get("jobs", 20_000)), int(p.get("batch", 1000))
    result = ChildResult(notes=side.notes)
    workdir = args.workdir / "drain"
    workdir.mkdir(parents=True, exist_ok=True)
    copy_probe(workdir)
    side.prepare(workdir, int(p.get("concurrency", 100)))
    enqueue_s = asyncio.run(enqueue_batches(side, jobs, batch))
    samples_path = workdir / "samples.json"
    worker = side.worker(probe_env(samples_path, jobs), workdir / "worker.log")
    try:
        if not wait_file(Path(f"{samples_path}.done"), float(p.get("timeout_s", 600)), worker):
            result.notes.append(f"the drain did not finish: {worker.tail(5)}")
    finally:
        stop(worker, result.notes)
    samples = Samples.read(samples_path)
    starts = sorted(s[2] for s in samples.counted())
    span = starts[-1] - starts[0] if len(starts) > 1 else float("nan")
    result.figures.update(
        drain_jobs_per_s=round((len(starts) - 1) / span, 1),
        cpu_ms_per_job=round(samples.cpu_ms_per_job(), 3),
        enqueue_jobs_per_s=round(jobs / enqueue_s, 1),
        **samples.audit(jobs),
    )
    result.notes.append(
        f"drain: {jobs} jobs enqueued in batches of {batch} in {enqueue_s:.1f}s, then one "
        f"worker; {len(starts)} starts in {span:.2f}s (first to last start)"
    )
    return result


@dataclass
class Pacing:
    """The steady enqueuer's own record: how late it was against its schedule."""

    lags_s: list[float] = field(default_factory=list)
    sent: int = 0
    elapsed_s: float = 0.0


async def paced(side: QueueSide, rate: float, duration_s: float, lanes: int) -> Pacing:
    """`rate` jobs/s for `duration_s`, job i at t0 + i / rate, each enqueued alone."""
    pacing = Pacing()
    total = int(rate * duration_s)
    loop = asyncio.get_running_loop()
    async with side.connected() as enq:
        t0 = loop.time() + 0.2

        async def lane(k: int) -> None:
            for i in range(k, total, lanes):
                delay = t0 + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                pacing.lags_s.append(max(0.0, -delay))
                await enq.one({"i": i, "t": time.time()})
                pacing.sent += 1

        await asyncio.gather(*(lane(k) for k in range(lanes)))
        pacing.elapsed_s = loop.time() - t0
    return pacing


async def warm_up(side: QueueSide) -> None:
    async with side.connected() as enq:
        await enq.one({"i": WARM_UP, "t": time.time()})


def steady(side: QueueSide, args: ChildArgs) -> ChildResult:
    p = args.params
    rate, duration_s = float(p.get("rate", 500)), float(p.get("duration_s", 30))
    lanes = int(p.get("lanes", 8))
    total = int(rate * duration_s)
    result = ChildResult(notes=side.notes)
    workdir = args.workdir / "steady"
    workdir.mkdir(parents=True, exist_ok=True)
    copy_probe(workdir)
    side.prepare(workdir, int(p.get("concurrency", 100)))
    samples_path = workdir / "samples.json"
    worker = side.worker(probe_env(samples_path, total), workdir / "worker.log")
    try:
        asyncio.run(warm_up(side))
        if not wait_file(Path(f"{samples_path}.ready"), 120, worker):
            raise RuntimeError(f"the worker never ran the warm-up job: {worker.tail(20)}")
        pacing = asyncio.run(paced(side, rate, duration_s, lanes))
        if not wait_file(Path(f"{samples_path}.done"), float(p.get("timeout_s", 120)), worker):
            result.notes.append(f"not every job started: {worker.tail(5)}")
    finally:
        stop(worker, result.notes)
    samples = Samples.read(samples_path)
    latency_ms = [1000 * (start - enq) for _i, enq, start in samples.counted()]
    result.samples["latency_ms"] = latency_ms
    result.figures.update(
        latency_p50_ms=round(percentile(latency_ms, 50), 2),
        latency_p99_ms=round(percentile(latency_ms, 99), 2),
        latency_max_ms=round(max(latency_ms), 2) if latency_ms else float("nan"),
        cpu_ms_per_job=round(samples.cpu_ms_per_job(), 3),
        enqueued_per_s=round(pacing.sent / pacing.elapsed_s, 1),
        enqueue_lag_p99_ms=round(1000 * percentile(pacing.lags_s, 99), 1),
        **samples.audit(total),
    )
    result.notes.append(
        f"steady: {rate:g} jobs/s for {duration_s:g}s ({total} jobs), each enqueued alone "
        f"by {lanes} paced coroutines; latency = start - just before the enqueue call"
    )
    return result


def side_scenarios(
    make: Callable[[ChildArgs], QueueSide],
) -> dict[str, Callable[[ChildArgs], ChildResult]]:
    """The two scenarios every side runs."""
    return {
        "queue-drain": lambda args: drain(make(args), args),
        "queue-steady": lambda args: steady(make(args), args),
    }
