"""/metrics: the worker's Prometheus families, built from its own state once per scrape.

Three sources, none of which costs the hot path more than a few additions:

- events from the runtime (`RunEvents`), kept as plain numbers in a `RunTally`: runs by
  outcome, their duration and lateness histograms;
- live values read at scrape time: runs in flight here, leases lost, whether the
  database is up, database failures by kind (`DbHealth.errors_total`), the build, each
  task's period (for "no success for two periods" alerts);
- the task table as the last `TableReader` refresh saw it: last success, next run,
  quarantined, and the gauges of installed sources (`cronloop.gauges`: the outbox).
  Every worker sharing a table reports the same values for these: aggregate them with
  `max by (task)` (or `max by (state)`), never `sum` (see README, "Monitoring").

A scrape copies the tally on the loop (three dictionary copies), then, in a
thread, the families (`cronloop.web.families`) make their samples while
prometheus-client writes the text format, pausing now and then so the loop never waits
long for the GIL (`cronloop.web.pacing`). No labelled metric objects (a lock and a
child per task and per event) and no samples built ahead (a scrape's worth kept alive
set off the garbage collector's full collections). It never knows how runs are driven
or where the table lives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from importlib import metadata

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from cronloop.domain.outcome import Outcome
from cronloop.web.families import live_families, run_families, table_families
from cronloop.web.pacing import Pacer
from cronloop.web.table import TableReader
from cronloop.web.tally import RunTally, TallyCopy
from cronloop.web.view import WorkerView

# Few buckets: each is one line per task in every scrape, and with a thousand tasks
# writing the text format is what a scrape costs (a bucket less is 1,000 lines less).
# seconds: a quick task, a batch, a long job, a backup
DURATION_BUCKETS_S = (0.1, 1, 10, 60, 600)
# seconds late: on target (the claim is made ahead, most runs start within
# milliseconds), late, about a poll interval late, stalled
LATENESS_BUCKETS_S = (0.005, 0.05, 0.5, 5)


def version() -> str:
    """`cronloop.__version__` when the package defines one, else the installed metadata."""
    import cronloop

    found = getattr(cronloop, "__version__", None)
    if isinstance(found, str):
        return found
    try:
        return metadata.version("cronloop")
    except metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    """The families of /metrics, and the runtime's event sink
    (`cronloop.runtime.events.RunEvents`)."""

    def __init__(self, view: WorkerView, table: TableReader) -> None:
        self.tally = RunTally(DURATION_BUCKETS_S, LATENESS_BUCKETS_S)
        self.view = view
        self.table = table
        self.clock = view.clock
        self.version = version()

    def prepare(self, tasks: Iterable[str]) -> None:
        """Each task's histograms exist from the start (at 0), so `rate()` sees a
        task's first run."""
        self.tally.prepare(tasks)

    def run_started(self, task: str, lateness_s: float) -> None:
        self.tally.started(task, lateness_s)

    def run_ended(self, task: str, outcome: Outcome, duration_s: float) -> None:
        self.tally.ended(task, outcome.value, duration_s)
        if outcome is Outcome.SUCCESS:
            self.table.succeeded(task, self.clock.now())

    def scrape(self, pacer: Pacer | None = None) -> Collector:
        """What one scrape writes: the tally copied now, the rest read when collected,
        paced by `pacer` (a new one by default). Call it on the loop (the tally is
        written there)."""
        return _Scrape(self, self.tally.copy(), pacer or Pacer())

    async def exposition(self, pacer: Pacer | None = None) -> bytes:
        """The text format: the tally is copied here, on the loop; the samples are made
        and written in a thread (about 0.1 s of CPU for a thousand tasks, which the
        loop must not spend in one go), paced. The families read only plain values
        and copies of the worker's state, so reading them from a thread is safe."""
        return await asyncio.to_thread(generate_latest, self.scrape(pacer))


class _Scrape(Collector):
    """One scrape: the run tally's families, the live worker's, the task table's."""

    def __init__(self, metrics: Metrics, tally: TallyCopy, pacer: Pacer) -> None:
        self.metrics = metrics
        self.tally = tally
        self.pacer = pacer

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        yield from run_families(self.tally, self.pacer)
        yield from live_families(m.view, m.version, self.pacer)
        yield from table_families(m.table.snapshot, self.pacer)
