"""/metrics: the worker's Prometheus registry (its own, never the global one).

Three sources, none of which costs the hot path more than a counter increment:

- events from the runtime (`RunEvents`): runs by outcome, their duration and lateness;
- live values read at scrape time: runs in flight here, leases lost, whether the
  database is up, database failures by kind (`DbHealth.errors_total`), the build, each
  task's period (for "no success for two periods" alerts);
- the task table as the last `TableReader` refresh saw it: last success, next run,
  quarantined, and the gauges of installed sources (`cronloop.gauges`: the outbox).
  Every worker sharing a table reports the same values for these: aggregate them with
  `max by (task)` (or `max by (state)`), never `sum` (see README, "Monitoring").

It never knows how runs are driven or where the table lives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator
from importlib import metadata

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cronloop.domain.outcome import Outcome
from cronloop.web.gauges import GaugeSample
from cronloop.web.table import TableReader
from cronloop.web.view import WorkerView

# Few buckets: each is one line per task in every scrape, and with a thousand tasks
# writing the text format is what a scrape costs (a bucket less is 1,000 lines less).
# seconds: from a quick task to a long backup
DURATION_BUCKETS_S = (0.01, 0.1, 1, 10, 60, 300, 1800)
# seconds late: the claim is made ahead, so most runs start within milliseconds
LATENESS_BUCKETS_S = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10)


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
    """The registry, and the runtime's event sink (`cronloop.runtime.events.RunEvents`)."""

    def __init__(self, view: WorkerView, table: TableReader) -> None:
        # no `_created` series: they double the output and no alert or panel needs them
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.runs = Counter(
            "cronloop_runs",
            "Runs that ended on this worker, by outcome.",
            ("task", "outcome"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "cronloop_run_duration_seconds",
            "How long runs took on this worker.",
            ("task",),
            buckets=DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self.lateness = Histogram(
            "cronloop_run_lateness_seconds",
            "From when a run was due to when it started, on this worker.",
            ("task",),
            buckets=LATENESS_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(_Live(view))
        self.registry.register(_Table(table))
        self.table = table
        self.clock = view.clock

    def prepare(self, tasks: Iterable[str]) -> None:
        """Create each task's histograms now: a first observation would otherwise build
        them on the hot path (about 0.1 ms a task), and the series exist from the start
        (at 0), so `rate()` sees a task's first run."""
        for task in tasks:
            self.duration.labels(task)
            self.lateness.labels(task)

    def run_started(self, task: str, lateness_s: float) -> None:
        self.lateness.labels(task).observe(lateness_s)

    def run_ended(self, task: str, outcome: Outcome, duration_s: float) -> None:
        self.runs.labels(task, outcome.value).inc()
        self.duration.labels(task).observe(duration_s)
        if outcome is Outcome.SUCCESS:
            self.table.succeeded(task, self.clock.now())

    async def exposition(self) -> bytes:
        """The text format, written in a thread: with a thousand tasks it takes a quarter
        of a second of CPU, which the loop must not spend in one go. The collectors read
        only plain values and copies, so reading them from a thread is safe."""
        return await asyncio.to_thread(generate_latest, self.registry)


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
