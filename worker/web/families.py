"""The metric families of one scrape, their samples made while prometheus-client writes them.

Each function yields prometheus-client `Metric`s (counter, gauge, histogram) whose
samples are a `PacedSamples`: made one by one from plain values as the text is written,
a pause now and then for the loop. The names, labels and help texts of /metrics live
here. Three sources: the run tally (a copy taken on the loop), the live worker (read
here, in the scrape thread: plain values and copies only), the task-table snapshot. It
never knows the text format nor where the values come from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from functools import partial

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from cronloop.web.gauges import GaugeSample
from cronloop.web.pacing import PacedSamples, Pacer
from cronloop.web.table import Snapshot
from cronloop.web.tally import HistogramCopy, TallyCopy
from cronloop.web.view import WorkerView

Source = Callable[[], Iterable[Sample]]


def _streamed(family: Metric, source: Source, pacer: Pacer) -> Metric:
    family.samples = PacedSamples(source, pacer)
    return family


def _per_task(name: str, values: Callable[[], Iterable[tuple[str, float]]]) -> Source:
    """Samples `name{task}` from (task, value) pairs, made when iterated."""

    def source() -> Iterator[Sample]:
        for task, value in values():
            yield Sample(name, {"task": task}, value)

    return source


def run_families(tally: TallyCopy, pacer: Pacer) -> Iterator[Metric]:
    def runs() -> Iterator[Sample]:
        for (task, outcome), count in sorted(tally.runs.items()):
            yield Sample("cronloop_runs_total", {"task": task, "outcome": outcome}, count)

    counter = CounterMetricFamily(
        "cronloop_runs", "Runs that ended on this worker, by outcome.", labels=["task", "outcome"]
    )
    yield _streamed(counter, runs, pacer)
    for name, help_text, data in (
        ("cronloop_run_duration_seconds", "How long runs took on this worker.", tally.duration),
        (
            "cronloop_run_lateness_seconds",
            "From when a run was due to when it started, on this worker.",
            tally.lateness,
        ),
    ):
        family = HistogramMetricFamily(name, help_text, labels=["task"])
        yield _streamed(family, partial(_histogram_samples, name, data), pacer)


def _histogram_samples(name: str, data: HistogramCopy) -> Iterator[Sample]:
    """Each task's buckets (cumulative), count and sum: the samples prometheus-client's
    own `Histogram` gives."""
    # the `le` values as prometheus-client writes them for its own histograms
    bounds = [floatToGoString(b) for b in data.bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
    bucket, count, total = f"{name}_bucket", f"{name}_count", f"{name}_sum"
    for task in sorted(data.series):
        series = data.series[task]
        cumulative = 0.0
        for le, n in zip(bounds, series[:-1], strict=True):
            cumulative += n
            yield Sample(bucket, {"task": task, "le": le}, cumulative)
        yield Sample(count, {"task": task}, cumulative)
        yield Sample(total, {"task": task}, series[-1])


def live_families(view: WorkerView, version: str, pacer: Pacer) -> Iterator[Metric]:
    """Values read from the running worker at scrape time."""
    info = GaugeMetricFamily(
        "cronloop_build_info", "The cronloop version this worker runs.", labels=["version"]
    )
    info.add_metric([version], 1)
    yield info
    periods = dict(view.periods())

    def running() -> Iterable[tuple[str, float]]:
        counts = dict.fromkeys(periods, 0)  # 0 for this worker's idle tasks: no gap in graphs
        for name in tuple(view.running()):
            counts[name] = counts.get(name, 0) + 1
        return sorted(counts.items())

    family = GaugeMetricFamily(
        "cronloop_runs_running", "Runs in flight on this worker.", labels=["task"]
    )
    yield _streamed(family, _per_task("cronloop_runs_running", running), pacer)
    family = GaugeMetricFamily(
        "cronloop_task_period_seconds",
        "The task's period (for weekly and cron schedules: the gap between two slots).",
        labels=["task"],
    )
    source = _per_task("cronloop_task_period_seconds", partial(sorted, periods.items()))
    yield _streamed(family, source, pacer)
    yield CounterMetricFamily(
        "cronloop_leases_lost",
        "Runs this worker stopped because it lost or could not renew their lease.",
        value=view.leases_lost(),
    )
    yield GaugeMetricFamily(
        "cronloop_database_up",
        "1 when this worker's last database call succeeded, 0 during an outage.",
        value=0 if view.health.down else 1,
    )
    errors = CounterMetricFamily(
        "cronloop_database_errors",
        "Failed database calls on this worker, by the error policy's kind.",
        labels=["kind"],
    )
    for kind, count in view.health.errors_total().items():
        errors.add_metric([kind], count)
    yield errors


def table_families(snap: Snapshot, pacer: Pacer) -> Iterator[Metric]:
    """The task table as last read: the same on every worker sharing it (use max)."""
    successes = dict(snap.last_success)  # a copy: the loop adds to it
    name = "cronloop_task_last_success_timestamp_seconds"
    family = GaugeMetricFamily(
        name,
        "When the task last ended successfully (Unix time), from the task table.",
        labels=["task"],
    )
    pairs = partial(_timestamps, successes)
    yield _streamed(family, _per_task(name, pairs), pacer)
    name = "cronloop_task_next_run_timestamp_seconds"
    family = GaugeMetricFamily(
        name, "When the task runs next (Unix time), from the task table.", labels=["task"]
    )
    next_runs = {s.name: s.next_run for s in snap.states if s.next_run is not None}
    yield _streamed(family, _per_task(name, partial(_timestamps, next_runs)), pacer)
    name = "cronloop_task_quarantined"
    family = GaugeMetricFamily(
        name,
        "1 when the task is quarantined (needs `cronloop resume`), from the task table.",
        labels=["task"],
    )

    def quarantined() -> Iterable[tuple[str, float]]:
        return ((s.name, 1 if snap.quarantined(s) else 0) for s in snap.states)

    yield _streamed(family, _per_task(name, quarantined), pacer)
    yield from gauge_families(snap.gauges)


def _timestamps(when: Mapping[str, datetime]) -> Iterator[tuple[str, float]]:
    for task in sorted(when):
        yield task, when[task].timestamp()


def gauge_families(samples: tuple[GaugeSample, ...]) -> Iterator[Metric]:
    """The gauge sources' samples, one family per name (labels as the first sample's)."""
    families: dict[str, GaugeMetricFamily] = {}
    for sample in samples:
        family = families.get(sample.name)
        if family is None:
            family = GaugeMetricFamily(sample.name, sample.help, labels=sorted(sample.labels))
            families[sample.name] = family
        family.add_metric([sample.labels[k] for k in sorted(sample.labels)], sample.value)
    yield from families.values()
