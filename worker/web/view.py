"""What the web server may see of a running worker: one object the composition root fills.

Only callables and the store: the server reads the runtime's state, never changes it
(pause, resume and trigger are store verbs, the same as the CLI's). It never knows the
supervisor's internals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cronloop.domain.clock import Clock
from cronloop.runtime.dbhealth import DbHealth
from cronloop.store.interface import Store


@dataclass(frozen=True)
class WorkerView:
    store: Store
    health: DbHealth  # every database call the server makes goes through the policy
    clock: Clock
    running: Callable[[], Sequence[str]]  # names of this worker's running runs
    periods: Callable[[], Mapping[str, float]]  # each runnable task's period, seconds
    leases_lost: Callable[[], int]
    draining: Callable[[], bool]
    heartbeat_age_s: Callable[[], float]  # how long ago the loop last beat
    heartbeat_limit_s: float  # older than this, the loop is stuck (watchdog_s)
    schema_current: Callable[[], Awaitable[bool]]
    sessions: Any  # the session factory tasks get as ctx.db (for gauge sources)
    wake: Callable[[], None]  # a task was triggered or resumed here: look at the table again
