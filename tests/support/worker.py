"""The one wrapper around a background `cronloop run` process.

A thread reads the process's output (stderr and stdout together) line by line, keeps
every line with its arrival time, optionally copies it to a log file as it comes (so a
killed or hung worker's log is there to read), and wakes whoever waits. JSON lines are
parsed into events (stamped `_t`, the arrival time) only when somebody looks, so the
reader stays cheap beside a benchmarked fleet that logs thousands of lines a second.
Every wait has a timeout and ends as soon as the line arrives or the process is gone:
nobody sleeps and polls.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

Event = dict[str, Any]


def parse_json(line: str) -> Event | None:
    """The event of a JSON log line, None for any other line."""
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def matches(event: Event, name: str, fields: Mapping[str, Any]) -> bool:
    return event.get("event") == name and all(event.get(k) == v for k, v in fields.items())


class WorkerProcess:
    """A `cronloop run` (or any command logging JSON lines) in the background.

    `dump_signal`, when set, is sent before killing a worker that did not exit in time,
    so that it can print what it was doing (the chaos tasks dump their asyncio tasks).
    """

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        *,
        label: str = "worker",
        log_path: Path | None = None,
        dump_signal: int | None = None,
        cond: threading.Condition | None = None,
    ) -> None:
        self.argv = list(argv)
        self.label = label
        self.log_path = log_path
        self.dump_signal = dump_signal
        self.killed = False  # by kill(): its exit code is ours, not the worker's
        self.lines: list[str] = []
        self._arrived: list[float] = []  # time.time() of each line
        self._events: list[Event] = []
        self._parsed = 0  # lines looked at for events so far
        # set under the lock with the last notify: a waiter that checked the reader
        # thread's is_alive() could see it still alive after that notify and sleep out
        # its whole timeout (seen on 3.13 in CI)
        self._output_ended = False
        # shared by the workers of one test, so that `wait_for_total` wakes on any of them
        self._cond = cond or threading.Condition()
        self.proc = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._pump, daemon=True, name=f"read-{label}")
        self._reader.start()

    # -- reading ---------------------------------------------------------------------------

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        log: IO[str] | None = None
        if self.log_path is not None:
            log = self.log_path.open("w", encoding="utf-8")
        try:
            for raw in self.proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                now = time.time()
                if log is not None:
                    log.write(line + "\n")
                with self._cond:
                    self.lines.append(line)
                    self._arrived.append(now)
                    self._cond.notify_all()
        finally:
            if log is not None:
                log.close()
            with self._cond:
                self._output_ended = True
                self._cond.notify_all()

    def _catch_up(self) -> list[Event]:
        """Parse the lines that arrived since the last look (the lock is held)."""
        for i in range(self._parsed, len(self.lines)):
            event = parse_json(self.lines[i])
            if event is not None:
                event["_t"] = self._arrived[i]
                self._events.append(event)
        self._parsed = len(self.lines)
        return self._events

    @property
    def events(self) -> list[Event]:
        """Every JSON event so far (a copy), oldest first."""
        with self._cond:
            return list(self._catch_up())

    def find(self, name: str, since: int = 0, **fields: Any) -> list[Event]:
        """The events so far named `name` with these field values (from index `since`)."""
        with self._cond:
            return [e for e in self._catch_up()[since:] if matches(e, name, fields)]

    def mark(self) -> int:
        """The number of events so far: pass it as `since` to look only at later ones."""
        with self._cond:
            return len(self._catch_up())

    def wait_for(
        self, name: str, timeout: float = 30.0, since: int = 0, count: int = 1, **fields: Any
    ) -> Event:
        """The `count`-th event named `name` with these fields; AssertionError with the
        log's tail after `timeout` s, or as soon as the process is gone without it."""
        deadline = time.monotonic() + timeout
        found: list[Event] = []
        with self._cond:
            while True:
                events = self._catch_up()
                found += [e for e in events[since:] if matches(e, name, fields)]
                since = max(since, len(events))  # look at each event once
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or self._output_ended:
                    break
                self._cond.wait(left)
        if not self.alive():  # its output ended: it is exiting, say how
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        raise AssertionError(
            f"{self.label} (pid {self.pid}): no {count}x {name!r} {fields} within {timeout:g}s "
            f"(exit {self.proc.poll()}); log tail:\n{self.tail(40)}"
        )

    def alive(self) -> bool:
        """Whether its output may still bring lines."""
        with self._cond:
            return not self._output_ended

    def tail(self, n: int = 30) -> str:
        with self._cond:
            return "\n".join(self.lines[-n:])

    def errors(self) -> Counter[str]:
        """Error-level events by name, plus the lines that are not JSON (tracebacks)."""
        with self._cond:
            found: Counter[str] = Counter(
                str(e.get("event"))
                for e in self._catch_up()
                if e.get("level") in ("error", "critical")
            )
            raw = sum(1 for line in self.lines if line.strip() and not line.startswith("{"))
        if raw:
            found["non-JSON output lines"] = raw
        return found

    # -- the process -------------------------------------------------------------------------

    def signal(self, signum: int = signal.SIGTERM) -> None:
        """Send `signum` if the process is still running."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """The exit code, once the output is read to its end; AssertionError (and the
        process killed) if it does not exit within `timeout` s."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            if self.dump_signal is not None:
                self.signal(self.dump_signal)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(2)  # returns as soon as it died of it
            self.kill()
            raise AssertionError(
                f"{self.label} (pid {self.pid}) did not exit within {timeout:g}s; "
                f"log tail:\n{self.tail(120)}"
            ) from None
        self._reader.join(10)
        return rc

    def kill(self) -> None:
        """SIGKILL (after SIGCONT: a stopped process cannot die otherwise)."""
        if self.proc.poll() is None:
            self.killed = True
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
        self._reader.join(10)

    def cpu_s(self) -> float:
        """User + system CPU seconds so far (0 once the process is reaped)."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def wait_for_total(
    workers: Sequence[WorkerProcess], name: str, count: int, timeout: float, **fields: Any
) -> list[Event]:
    """Wait until `workers` (started with one shared `cond`) logged `count` events named
    `name` with these fields between them; AssertionError after `timeout` s or once all
    are gone without them."""
    conds = {id(w._cond) for w in workers}
    if len(conds) != 1:
        raise ValueError("wait_for_total needs workers started with one shared cond")
    cond = workers[0]._cond
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            found = [e for w in workers for e in w._catch_up() if matches(e, name, fields)]
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            if left <= 0 or not any(w.alive() for w in workers):
                break
            cond.wait(left)
    tails = "\n".join(f"--- {w.label}\n{w.tail(15)}" for w in workers)
    raise AssertionError(
        f"{len(found)} of {count}x {name!r} {fields} within {timeout:g}s:\n{tails}"
    )
