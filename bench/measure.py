"""What the benchmark measures with, on either side: statement counting through
SQLAlchemy's cursor events, this process's CPU and RSS (read once, or sampled by a
thread), another process's CPU (from /proc, e.g. a worker's or the database server's),
and percentiles.
"""

from __future__ import annotations

import bisect
import os
import resource
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine


@dataclass
class StatementCounter:
    """Counts the statements every SQLAlchemy engine of this process sends (the cursor
    events fire for async engines too: their sync engine does the work), and times those
    whose SQL matches `timed` (e.g. the claim query) in milliseconds."""

    timed: Callable[[str], bool] | None = None
    count: int = 0
    timings_ms: list[float] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)  # time.time() of every statement

    def between(self, start: float, end: float) -> int:
        """Statements sent in [start, end) (wall-clock seconds)."""
        return bisect.bisect_left(self.stamps, end) - bisect.bisect_left(self.stamps, start)

    def install(self) -> StatementCounter:
        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)
        return self

    def reset(self) -> None:
        self.count = 0
        self.timings_ms.clear()
        self.stamps.clear()

    def _before(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool
    ) -> None:
        self.count += 1
        self.stamps.append(time.time())
        if self.timed is not None and self.timed(statement):
            conn.info["bench_t0"] = time.perf_counter()

    def _after(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, executemany: bool
    ) -> None:
        t0 = conn.info.pop("bench_t0", None)
        if t0 is not None:
            self.timings_ms.append((time.perf_counter() - t0) * 1000)


def cpu_s() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (its threads included), from
    /proc/PID/stat; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # after "pid (comm)": state is field 3, utime 14 and stime 15 (1-based, proc(5))
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listener_pid(port: int) -> int | None:
    """The process listening on TCP `port` on this machine (IPv4 or IPv6), or None: the
    socket's inode from /proc/net/tcp*, then the process holding it among /proc/*/fd."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            # local address "HEX_IP:HEX_PORT", state 0A = LISTEN, inode column 10
            if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":
                inodes.add(f"socket:[{cols[9]}]")
    if not inodes:
        return None
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
            except OSError:
                continue
    return None


def cpu_ms_per(cpu_seconds: float, count: float) -> float:
    """Milliseconds of CPU per run (or message, or poll); NaN without any."""
    return 1000 * cpu_seconds / count if count else float("nan")


def rss_mb() -> float:
    """Resident set size of this process now, in MB (from /proc)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (values need not be sorted)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def lateness_figures(samples_ms: Sequence[float]) -> dict[str, float]:
    return {
        "lateness_p50_ms": percentile(samples_ms, 50),
        "lateness_p99_ms": percentile(samples_ms, 99),
        "lateness_max_ms": max(samples_ms) if samples_ms else float("nan"),
    }


@dataclass
class Sampler:
    """(time, cpu seconds, RSS MB) of this process every `every_s`, in a thread."""

    every_s: float = 0.25
    points: list[tuple[float, float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Sampler:
        threading.Thread(target=self._run, daemon=True, name="bench-sampler").start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.points.append((time.time(), cpu_s(), rss_mb()))

    def stop(self) -> None:
        self._stop.set()
        self.points.append((time.time(), cpu_s(), rss_mb()))

    def at(self, when: float) -> tuple[float, float, float]:
        """The first sample at or after `when` (the last one if none)."""
        i = bisect.bisect_left([p[0] for p in self.points], when)
        return self.points[min(i, len(self.points) - 1)]

    def cpu_pct(self, start: float, end: float) -> float:
        a, b = self.at(start), self.at(end)
        return 100 * (b[1] - a[1]) / max(b[0] - a[0], 1e-9)

    def cpu_s(self, start: float, end: float) -> float:
        """CPU seconds between the samples at `start` and `end` (the window's own)."""
        return self.at(end)[1] - self.at(start)[1]

    def cpu_s_around(self, start: float, end: float) -> float:
        """CPU seconds from the last sample at or before `start` to the first at or after
        `end`: never less than the window's own, even when it is shorter than the
        sampling interval (a burst of a few hundred ms); at most two intervals more."""
        times = [p[0] for p in self.points]
        i = max(0, bisect.bisect_right(times, start) - 1)
        j = min(len(self.points) - 1, bisect.bisect_left(times, end))
        return self.points[j][1] - self.points[i][1]
