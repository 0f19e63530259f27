"""Gauges other packages add to /metrics: the entry-point group `cronloop.gauges`.

An entry point names an async function `(sessions, now) -> Iterable[GaugeSample]`, given
the service's session factory (`ctx.db`'s) and the current UTC time. The standard tasks
add their outbox's backlog this way, so the core never knows the outbox table. A source
is read with the task table (`TableReader.refresh`), bounded in time; one that fails is
logged (once until it works again) and skipped: a metric never stops the worker. It never
knows what a source reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any

import structlog

from cronloop.systemd.logs import short_error

log = structlog.get_logger("cronloop.web")

ENTRY_POINT_GROUP = "cronloop.gauges"
SOURCE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class GaugeSample:
    """One gauge value: `name` (with the `cronloop_` prefix), its help, labels, value."""

    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


GaugeSource = Callable[[Any, datetime], Awaitable[Iterable[GaugeSample]]]


def discover_sources() -> list[tuple[str, GaugeSource]]:
    """(name, function) of every installed source; one that cannot load is logged."""
    found: list[tuple[str, GaugeSource]] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found.append((ep.name, ep.load()))
        except Exception as exc:
            log.warning("gauge source cannot load; skipped", source=ep.name, error=short_error(exc))
    return found


class GaugeReader:
    def __init__(self, sources: list[tuple[str, GaugeSource]], sessions: Any) -> None:
        self.sources = sources
        self.sessions = sessions
        self._failing: set[str] = set()

    async def read(self, now: datetime) -> tuple[GaugeSample, ...]:
        samples: list[GaugeSample] = []
        for name, source in self.sources:
            try:
                async with asyncio.timeout(SOURCE_TIMEOUT_S):
                    samples.extend(await source(self.sessions, now))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if name not in self._failing:
                    log.warning("gauge source failed; skipped", source=name, error=short_error(exc))
                self._failing.add(name)
                continue
            self._failing.discard(name)
        return tuple(samples)
