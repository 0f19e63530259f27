"""The words the service uses for a run's result and a task's state.

They are stored in the database as their string values, so renaming a member is a
migration, not a refactor.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """How one run ended (APScheduler-style: every ending has a name)."""

    RUNNING = "running"  # history rows of runs not yet finished
    SUCCESS = "success"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    INTERRUPTED = "interrupted"  # shutdown or lifetime drain: runs again at once, not a failure
    ABANDONED = "abandoned"  # the worker was lost (crash, lease lost) before it could record
    SKIPPED = "skipped"

    @property
    def is_failure(self) -> bool:
        """Whether this outcome counts towards `consecutive_failures`."""
        return self in (Outcome.FAILED, Outcome.TIMED_OUT, Outcome.ABANDONED)


class TaskStatus(StrEnum):
    """A task row's state, as an operator sees it in `cronloop status`."""

    ACTIVE = "active"
    PAUSED = "paused"  # by an operator; only `cronloop resume` undoes it
    REMOVED = "removed"  # the code that defined it is gone (iTop's resync)
    DISABLED = "disabled"  # enabled=0 or a bad schedule setting; last_error says why
    QUARANTINED = "quarantined"  # misbehaved repeatedly; needs `cronloop resume`
