"""What the runtime tells an observer about runs: the metrics sink interface.

The runner calls `run_started` once a run starts and `run_ended` once its end is known;
the default observer does nothing. `cronloop.web.metrics` implements it with
prometheus-client counters. Calls are plain synchronous method calls on the loop thread:
an observer must be quick (a counter increment) and must not raise. It never knows who
listens.
"""

from __future__ import annotations

from typing import Protocol

from cronloop.domain.outcome import Outcome


class RunEvents(Protocol):
    def run_started(self, task: str, lateness_s: float) -> None:
        """A run started `lateness_s` after it was due (0 or more)."""

    def run_ended(self, task: str, outcome: Outcome, duration_s: float) -> None:
        """A run ended with `outcome` after `duration_s`."""


class NoEvents:
    """The observer when nobody listens."""

    def run_started(self, task: str, lateness_s: float) -> None:
        return None

    def run_ended(self, task: str, outcome: Outcome, duration_s: float) -> None:
        return None
