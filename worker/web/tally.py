"""What the runtime's run events leave behind for /metrics, as plain numbers.

Per task: the runs by outcome, and two histograms (duration, lateness) kept as lists of
per-bucket counts and a sum. An event costs a dictionary look-up, a bisect and two
additions on the loop thread (prometheus-client's labelled children cost ten times
that: a label check, a lock and a child object per task). A scrape takes `copy()` on the
loop, a few milliseconds for a thousand tasks, and writes the text from that copy in a
thread, so the writing never sees a histogram half-updated. Only the loop thread writes
here. It never knows the exposition format nor where the events come from.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class HistogramCopy:
    """One family's histograms at one moment: `bounds` (upper bounds, seconds, +Inf
    implied) and, per task, the count in each bucket (not cumulative) and the sum."""

    bounds: tuple[float, ...]
    counts: dict[str, list[int]]
    sums: dict[str, float]


class Histograms:
    """Per-task histograms with the same bucket bounds; `observe` is the hot path."""

    def __init__(self, bounds: Sequence[float]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"histogram bounds must be increasing and distinct: {bounds!r}")
        self.bounds = tuple(float(b) for b in bounds)
        self._counts: dict[str, list[int]] = {}
        self._sums: dict[str, float] = {}

    def add(self, task: str) -> None:
        """Make `task`'s series exist (at 0) before its first observation."""
        if task not in self._counts:
            self._counts[task] = [0] * (len(self.bounds) + 1)
            self._sums[task] = 0.0

    def observe(self, task: str, value: float) -> None:
        counts = self._counts.get(task)
        if counts is None:
            self.add(task)
            counts = self._counts[task]
        # bucket i holds bounds[i-1] < value <= bounds[i]; the last one is +Inf
        counts[bisect_left(self.bounds, value)] += 1
        self._sums[task] += value

    def copy(self) -> HistogramCopy:
        return HistogramCopy(
            self.bounds,
            {task: counts[:] for task, counts in self._counts.items()},
            dict(self._sums),
        )


@dataclass(frozen=True)
class TallyCopy:
    """The whole tally at one moment (what one scrape writes)."""

    runs: dict[tuple[str, str], int]  # (task, outcome) -> runs ended
    duration: HistogramCopy
    lateness: HistogramCopy


class RunTally:
    """Runs by outcome, their duration and their lateness, per task."""

    def __init__(self, duration_bounds_s: Sequence[float], lateness_bounds_s: Sequence[float]):
        self.runs: dict[tuple[str, str], int] = {}
        self.duration = Histograms(duration_bounds_s)
        self.lateness = Histograms(lateness_bounds_s)

    def prepare(self, tasks: Iterable[str]) -> None:
        """Each task's histograms exist from the start, at 0: `rate()` sees its first run."""
        for task in tasks:
            self.duration.add(task)
            self.lateness.add(task)

    def started(self, task: str, lateness_s: float) -> None:
        self.lateness.observe(task, lateness_s)

    def ended(self, task: str, outcome: str, duration_s: float) -> None:
        key = (task, outcome)
        self.runs[key] = self.runs.get(key, 0) + 1
        self.duration.observe(task, duration_s)

    def copy(self) -> TallyCopy:
        return TallyCopy(dict(self.runs), self.duration.copy(), self.lateness.copy())
