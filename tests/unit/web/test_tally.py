"""The run tally behind /metrics: buckets, copies, and that a scrape says exactly what
prometheus-client's own labelled Counter and Histogram would say for the same events."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from cronloop.domain.clock import FakeClock
from cronloop.domain.outcome import Outcome
from cronloop.domain.records import TaskDeclaration
from cronloop.runtime.dbhealth import DbHealth
from cronloop.store.memory import MemoryStore
from cronloop.store.sql.errors import classify
from cronloop.web.metrics import DURATION_BUCKETS_S, LATENESS_BUCKETS_S, Metrics
from cronloop.web.table import TableReader
from cronloop.web.tally import Histograms, RunTally
from cronloop.web.view import WorkerView

RUN_FAMILIES = ("cronloop_runs", "cronloop_run_duration_seconds", "cronloop_run_lateness_seconds")


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    hist = Histograms((0.1, 1.0))
    for value in (0.0, 0.1, 0.100001, 1.0, 1.5, 99.0):
        hist.observe("t", value)
    *counts, total = hist.copy().series["t"]
    assert counts == [2, 2, 2]  # (..0.1], (0.1..1], (1..+Inf)
    assert total == pytest.approx(0.0 + 0.1 + 0.100001 + 1.0 + 1.5 + 99.0)


def test_a_copy_does_not_move_with_later_events() -> None:
    tally = RunTally((1.0,), (1.0,))
    tally.prepare(["t"])
    tally.ended("t", "success", 0.5)
    before = tally.copy()
    tally.ended("t", "success", 0.5)
    tally.started("t", 2.0)
    assert before.runs == {("t", "success"): 1}
    assert before.duration.series["t"] == (1, 0, 0.5) and before.lateness.series["t"] == (0, 0, 0)
    assert tally.copy().duration.series["t"] == (2, 0, 1.0)


@pytest.mark.parametrize("bounds", [(), (1.0, 0.5), (1.0, 1.0)])
def test_bounds_must_increase(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="increasing and distinct"):
        Histograms(bounds)


def _view(store: MemoryStore, clock: FakeClock) -> WorkerView:
    async def schema() -> bool:
        return True

    return WorkerView(
        store=store,
        health=DbHealth(clock, lambda: 5.0, classify),
        clock=clock,
        running=lambda: (),
        periods=lambda: {},
        leases_lost=lambda: 0,
        draining=lambda: False,
        heartbeat_age_s=lambda: 0.0,
        heartbeat_limit_s=30.0,
        schema_current=schema,
        sessions=None,
        wake=lambda: None,
    )


class _Only:
    """The run families of a scrape, for comparing with the reference registry."""

    def __init__(self, metrics: Metrics) -> None:
        self.scrape = metrics.scrape()

    def collect(self) -> Iterator[Metric]:
        return (m for m in self.scrape.collect() if m.name in RUN_FAMILIES)


EVENTS = [
    ("backup", 0.0, Outcome.SUCCESS, 612.0),
    ("backup", 0.004, Outcome.TIMED_OUT, 1800.0),
    ("gc", 0.005, Outcome.SUCCESS, 0.1),
    ("gc", 0.05, Outcome.SUCCESS, 0.0004),
    ("gc", 7.5, Outcome.FAILED, 10.0),
    ("mail-out", 0.0501, Outcome.SUCCESS, 59.9),
]


async def test_a_scrape_says_what_prometheus_clients_own_metrics_would() -> None:
    clock = FakeClock()
    store = MemoryStore()
    await store.sync_tasks(
        [TaskDeclaration(n, "every 60s", 10, clock.now() + timedelta(seconds=5)) for n in "ab"]
    )
    view = _view(store, clock)
    metrics = Metrics(view, TableReader(view))
    reference = CollectorRegistry()
    runs = Counter(
        "cronloop_runs",
        "Runs that ended on this worker, by outcome.",
        ("task", "outcome"),
        registry=reference,
    )
    duration = Histogram(
        "cronloop_run_duration_seconds",
        "How long runs took on this worker.",
        ("task",),
        buckets=DURATION_BUCKETS_S,
        registry=reference,
    )
    lateness = Histogram(
        "cronloop_run_lateness_seconds",
        "From when a run was due to when it started, on this worker.",
        ("task",),
        buckets=LATENESS_BUCKETS_S,
        registry=reference,
    )
    metrics.prepare(["idle"])
    duration.labels("idle")
    lateness.labels("idle")
    for task, late_s, outcome, took_s in EVENTS:
        metrics.run_started(task, late_s)
        metrics.run_ended(task, outcome, took_s)
        lateness.labels(task).observe(late_s)
        runs.labels(task, outcome.value).inc()
        duration.labels(task).observe(took_s)

    def samples(text: bytes) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
        return {
            (s.name, tuple(sorted(s.labels.items())), s.value)
            for f in text_string_to_metric_families(text.decode())
            for s in f.samples
            if not s.name.endswith("_created")
        }

    ours, theirs = samples(generate_latest(_Only(metrics))), samples(generate_latest(reference))
    assert ours == theirs
    assert ("cronloop_run_lateness_seconds_bucket", (("le", "0.005"), ("task", "gc")), 1) in ours
    assert ("cronloop_run_duration_seconds_count", (("task", "idle"),), 0) in ours
