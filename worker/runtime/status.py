"""The one line `systemctl status` shows (sd_notify STATUS): what runs, what is next,
when the loop last polled, whether the database is down. It only formats and limits the
rate; it never knows where the line goes (the `on_status` hook) nor how state is kept."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from cronloop.domain.clock import Clock

MIN_INTERVAL_S = 1.0  # a burst ticks hundreds of times a second


class StatusLine:
    def __init__(self, clock: Clock, publish: Callable[[str], None]) -> None:
        self.clock = clock
        self.publish = publish
        self._last = -1e9  # monotonic time of the last line

    def report(self, running: Iterable[str], next_due: datetime | None, db_down: bool) -> None:
        """At most once a second, unless the database is down (say so at once)."""
        now = self.clock.monotonic()
        if now - self._last < MIN_INTERVAL_S and not db_down:
            return
        self._last = now
        self.publish(format_status(sorted(set(running)), next_due, self.clock.now(), db_down))


def format_status(names: list[str], next_due: datetime | None, now: datetime, db_down: bool) -> str:
    parts = [f"{len(names)} running" + (f" ({', '.join(names[:4])})" if names else "")]
    if next_due is not None:
        parts.append(f"next run {next_due.strftime('%H:%M:%S')} UTC")
    parts.append(f"last poll {now.strftime('%H:%M:%S')} UTC")
    if db_down:
        parts.append("DATABASE UNREACHABLE")
    return "; ".join(parts)
