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

A scrape copies the tally on the loop (milliseconds), then builds the metric families
and lets prometheus-client write the text format in a thread. No labelled metric
objects: with a thousand tasks their per-child samples cost as much as the writing.
It never knows how runs are driven or where the table lives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from importlib import metadata

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from cronloop.domain.outcome import Outcome
from cronloop.web.gauges import GaugeSample
from cronloop.web.table import TableReader
from cronloop.web.tally import HistogramCopy, RunTally, TallyCopy
from cronloop.web.view import WorkerView

# Few buckets: each is one line per task in every scrape, and with a thousand tasks
# writing the text format is what a scrape costs (a bucket less is 1,000 lines less).
# seconds: a quick task, a batch, a long job, a backup
DURATION_BUCKETS_S = (0.1, 1, 10, 60, 600)
# seconds late: on target (the claim is made ahead, most runs start within
# milliseconds), late, a poll interval or so late, stalled
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
        self.live = _Live(view)
        self.table_families = _Table(table)
        self.table = table
        self.clock = view.clock

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

    def scrape(self) -> Collector:
        """What one scrape writes: the tally copied now, the rest read when collected.
        Call it on the loop (the tally is written there)."""
        return _Scrape(self.tally.copy(), (self.live, self.table_families))

    async def exposition(self) -> bytes:
        """The text format: the tally is copied here, on the loop; the families are
        built and written in a thread (about 0.1 s of CPU for a thousand tasks, which
        the loop must not spend in one go). The other collectors read only plain
        values and copies, so reading them from a thread is safe."""
        return await asyncio.to_thread(generate_latest, self.scrape())


class _Scrape(Collector):
    """One scrape's families: the run tally's, then the live and table collectors'."""

    def __init__(self, tally: TallyCopy, others: tuple[Collector, ...]) -> None:
        self.tally = tally
        self.others = others

    def collect(self) -> Iterator[Metric]:
        runs = CounterMetricFamily(
            "cronloop_runs",
            "Runs that ended on this worker, by outcome.",
            labels=["task", "outcome"],
        )
        for (task, outcome), count in sorted(self.tally.runs.items()):
            runs.add_metric([task, outcome], count)
        yield runs
        yield _histogram(
            "cronloop_run_duration_seconds",
            "How long runs took on this worker.",
            self.tally.duration,
        )
        yield _histogram(
            "cronloop_run_lateness_seconds",
            "From when a run was due to when it started, on this worker.",
            self.tally.lateness,
        )
        for other in self.others:
            yield from other.collect()


def _histogram(name: str, help_text: str, data: HistogramCopy) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, help_text, labels=["task"])
    # the `le` values as prometheus-client writes them for its own histograms
    bounds = [floatToGoString(b) for b in data.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
    for task in sorted(data.counts):
        cumulative, total = [], 0
        for bound, count in zip(bounds, data.counts[task], strict=True):
            total += count
            cumulative.append((bound, float(total)))
        family.add_metric([task], cumulative, data.sums[task])
    return family


class _Live(Collector):
    """Values read from the running worker at scrape time."""

    def __init__(self, view: WorkerView) -> None:
        self.view = view
        self.version = version()

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "cronloop_build_info", "The cronloop version this worker runs.", labels=["version"]
        )
        info.add_metric([self.version], 1)
        yield info
        running = GaugeMetricFamily(
            "cronloop_runs_running", "Runs in flight on this worker.", labels=["task"]
        )
        periods = self.view.periods()
        counts = dict.fromkeys(periods, 0)  # 0 for this worker's idle tasks: no gap in graphs
        for name in tuple(self.view.running()):
            counts[name] = counts.get(name, 0) + 1
        for name, count in sorted(counts.items()):
            running.add_metric([name], count)
        yield running
        period = GaugeMetricFamily(
            "cronloop_task_period_seconds",
            "The task's period (for weekly and cron schedules: the gap between two slots).",
            labels=["task"],
        )
        for name, seconds in sorted(periods.items()):
            period.add_metric([name], seconds)
        yield period
        yield CounterMetricFamily(
            "cronloop_leases_lost",
            "Runs this worker stopped because it lost or could not renew their lease.",
            value=self.view.leases_lost(),
        )
        yield GaugeMetricFamily(
            "cronloop_database_up",
            "1 when this worker's last database call succeeded, 0 during an outage.",
            value=0 if self.view.health.down else 1,
        )
        errors = CounterMetricFamily(
            "cronloop_database_errors",
            "Failed database calls on this worker, by the error policy's kind.",
            labels=["kind"],
        )
        for kind, count in self.view.health.errors_total().items():
            errors.add_metric([kind], count)
        yield errors


class _Table(Collector):
    """The task table as last read: the same on every worker sharing it (use max)."""

    def __init__(self, table: TableReader) -> None:
        self.table = table

    def collect(self) -> Iterator[Metric]:
        snap = self.table.snapshot
        success = GaugeMetricFamily(
            "cronloop_task_last_success_timestamp_seconds",
            "When the task last ended successfully (Unix time), from the task table.",
            labels=["task"],
        )
        for name, when in sorted(dict(snap.last_success).items()):  # a copy: the loop adds
            success.add_metric([name], when.timestamp())
        next_run = GaugeMetricFamily(
            "cronloop_task_next_run_timestamp_seconds",
            "When the task runs next (Unix time), from the task table.",
            labels=["task"],
        )
        quarantined = GaugeMetricFamily(
            "cronloop_task_quarantined",
            "1 when the task is quarantined (needs `cronloop resume`), from the task table.",
            labels=["task"],
        )
        for state in snap.states:
            if state.next_run is not None:
                next_run.add_metric([state.name], state.next_run.timestamp())
            quarantined.add_metric([state.name], 1 if snap.quarantined(state) else 0)
        yield success
        yield next_run
        yield quarantined
        yield from _families(snap.gauges)


def _families(samples: tuple[GaugeSample, ...]) -> Iterator[Metric]:
    """The gauge sources' samples, one family per name (labels as the first sample's)."""
    families: dict[str, GaugeMetricFamily] = {}
    for sample in samples:
        family = families.get(sample.name)
        if family is None:
            family = GaugeMetricFamily(sample.name, sample.help, labels=sorted(sample.labels))
            families[sample.name] = family
        family.add_metric([sample.labels[k] for k in sorted(sample.labels)], sample.value)
    yield from families.values()
