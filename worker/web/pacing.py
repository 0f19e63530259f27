"""Pacing a scrape thread: CPU-bound Python work that hands the GIL back to the loop often.

A thread that computes holds the GIL until CPython's switch interval (5 ms) forces it
off, and the loop thread waits that long at every callback it runs meanwhile (each
timer, each socket read of a database reply): writing /metrics for a thousand tasks in
a plain thread made runs due during a scrape start tens of milliseconds late. A
`Pacer` sleeps `PAUSE_S` once `SLICE_S` of work has passed since its last pause, so the
loop waits at most about a slice; the scrape takes a little longer, the loop keeps its
timing.

`PacedSamples` is a family's samples for prometheus-client to write, made while it
iterates them (it iterates a family's samples once, and asks nothing else of them) and
paced: no sample of a scrape outlives its line. A thousand tasks' samples built ahead
and kept alive until written made the garbage collector run full collections of 50 ms
and more in the scrape thread, the GIL held all along. It never knows what the work is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.samples import Sample

SLICE_S = 0.0005  # the longest the loop waits for the GIL during a scrape, about
PAUSE_S = 0.0002  # long enough for a waiting thread to wake and take the GIL


class Pacer:
    """`step()` between small pieces of work, in the thread doing it."""

    def __init__(
        self,
        slice_s: float = SLICE_S,
        pause_s: float = PAUSE_S,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.slice_s = slice_s
        self.pause_s = pause_s
        self.clock = clock
        self.sleep = sleep
        self.pauses = 0
        self.longest_s = 0.0  # the longest stretch of work seen between two pauses
        self._since: float | None = None  # set by the first step, in the working thread

    def step(self) -> None:
        now = self.clock()
        if self._since is None:
            self._since = now
        worked_s = now - self._since
        if worked_s >= self.slice_s:
            self.longest_s = max(self.longest_s, worked_s)
            self.sleep(self.pause_s)  # releases the GIL: the loop takes it if it waits
            self.pauses += 1
            self._since = self.clock()


class PacedSamples(list[Sample]):
    """`Metric.samples` (a list, for prometheus-client's types) holding nothing: iterating
    it iterates `source()`, a step of `pacer` between two samples."""

    def __init__(self, source: Callable[[], Iterable[Sample]], pacer: Pacer) -> None:
        super().__init__()
        self.source = source
        self.pacer = pacer

    def __iter__(self) -> Iterator[Sample]:
        step = self.pacer.step
        for sample in self.source():
            step()
            yield sample
