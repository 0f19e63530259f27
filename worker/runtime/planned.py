"""Runs claimed ahead of their time, until their time comes.

One claim takes every run due within a short window (`DueTracker.ahead_s`), so that a
steady stream of runs costs one claim transaction per window instead of one per run. The
runs due later in the window wait here, in start order, and the loop starts each at its
own scheduled time. Their leases were taken at the claim and are far longer than the
window, so nothing renews them while they wait. On a stop, what still waits is given back
unrun (`Store.release`): its time has not come, so nothing of it ran. Knows no SQL, no
clock and no runner: the supervisor asks what is due and starts it.
"""

from __future__ import annotations

import heapq
import itertools
from datetime import datetime

from cronloop.domain.records import Claim


class Planned:
    """The claims waiting for their scheduled time, earliest first."""

    def __init__(self) -> None:
        # (scheduled_for, arrival order, claim, the monotonic time of its claim)
        self._heap: list[tuple[datetime, int, Claim, float]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, claim: Claim, claimed_mono: float) -> None:
        heapq.heappush(self._heap, (claim.scheduled_for, next(self._order), claim, claimed_mono))

    def next_start(self) -> datetime | None:
        """When the earliest waiting run is due; None if none waits."""
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now: datetime) -> list[tuple[Claim, float]]:
        """The waiting runs due at `now`, earliest first, with their claims' times."""
        due: list[tuple[Claim, float]] = []
        while self._heap and self._heap[0][0] <= now:
            _, _, claim, mono = heapq.heappop(self._heap)
            due.append((claim, mono))
        return due

    def take_all(self) -> list[Claim]:
        """Every waiting claim (a stop: they are given back unrun)."""
        claims = [claim for _, _, claim, _ in sorted(self._heap)]
        self._heap.clear()
        return claims
