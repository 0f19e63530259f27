"""Counting duplicate and lost runs from what the tasks themselves wrote.

Two sources, checked against each other:

- `cronloop_chaos_exec`, written by the chaos tasks: one row per execution, `finished`
  set with its last unit of work. A slot `(task, scheduled_for)` finished twice is a
  DUPLICATE; two executions of one task whose [started, end] intervals cross OVERLAP
  (end = `finished`, or `last_seen` for an execution that never finished). One
  exception, by design: a process that crashed (kill -9, watchdog exit 70) after a task's
  work but before the service recorded the run leaves that run `abandoned`, and it is run
  again (at least once, never lost). The test names the crashed pids; such slots are
  counted as RERUN_AFTER_CRASH, not duplicates.
- `cronloop_run`, the service's history: for each task the slots that reached a final
  outcome (success, failed, timed_out), in order. Between two consecutive final slots
  (and between the last one and the task's `planned_run`, the slot still to come), every
  period must be either run or counted in the earlier run's `missed`; a period that is
  neither is LOST. Triggered runs (retries) are off the schedule's slots and not counted.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

FINAL = ("success", "failed", "timed_out")


@dataclass
class Ledger:
    executions: int = 0
    finished: int = 0
    slots: int = 0
    missed: int = 0
    duplicates: list[tuple[str, datetime, int]] = field(default_factory=list)
    rerun_after_crash: list[tuple[str, datetime]] = field(default_factory=list)
    overlaps: list[tuple[str, str, str]] = field(default_factory=list)
    lost: list[tuple[str, datetime, int]] = field(default_factory=list)
    off_grid: list[tuple[str, datetime]] = field(default_factory=list)
    double_final: list[tuple[str, datetime, int]] = field(default_factory=list)
    unrecorded_success: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "executions": self.executions,
            "finished": self.finished,
            "slots": self.slots,
            "missed": self.missed,
            "duplicates": len(self.duplicates),
            "rerun_after_crash": len(self.rerun_after_crash),
            "overlaps": len(self.overlaps),
            "lost": sum(n for _, _, n in self.lost),
        }

    def assert_clean(self, *, allow_unrecorded: bool = False) -> None:
        problems: dict[str, list[Any]] = {
            "duplicate executions": self.duplicates,
            "overlapping executions": self.overlaps,
            "lost slots": self.lost,
            "slots off the schedule's grid": self.off_grid,
            "slots recorded final twice": self.double_final,
            "stuck rows": self.stuck,
        }
        if not allow_unrecorded:
            problems["history success without a finished execution"] = self.unrecorded_success
        bad = {k: v[:10] for k, v in problems.items() if v}
        assert not bad, f"{self.counts()}: {bad}"


def period_of(schedule: str) -> float | None:
    match = re.fullmatch(r"every ([0-9.]+)s", schedule)
    return float(match.group(1)) if match else None


def audit(db: Any, tasks: list[str] | None = None, crashed_pids: set[int] | None = None) -> Ledger:
    """Read both tables (after the workers stopped) and count what went wrong."""
    ledger = Ledger()
    names = set(tasks) if tasks else None
    execs = [
        r
        for r in db.rows(
            "SELECT run_id, task, scheduled_for, pid, started, last_seen, "
            "finished FROM cronloop_chaos_exec ORDER BY task, started, id"
        )
        if names is None or r.task in names
    ]
    history = [
        r
        for r in db.rows(
            "SELECT run_id, task_name, scheduled_for, outcome, missed, "
            "triggered FROM cronloop_run ORDER BY id"
        )
        if names is None or r.task_name in names
    ]
    outcome_of = {r.run_id: r.outcome for r in history}
    crashed = {
        r.run_id
        for r in execs
        if r.pid in (crashed_pids or set()) and outcome_of.get(r.run_id) == "abandoned"
    }
    _check_executions(ledger, execs, crashed)
    task_rows = {
        r.name: r
        for r in db.rows("SELECT name, schedule, planned_run, lease_token FROM cronloop_task")
        if names is None or r.name in names
    }
    _check_slots(ledger, history, task_rows)
    finished_runs = {r.run_id for r in execs if r.finished is not None}
    ledger.unrecorded_success = [
        r.run_id for r in history if r.outcome == "success" and r.run_id not in finished_runs
    ]
    ledger.stuck = [f"lease held: {n}" for n, r in task_rows.items() if r.lease_token] + [
        f"history running: {r.task_name} {r.run_id}" for r in history if r.outcome == "running"
    ]
    return ledger


def _check_executions(ledger: Ledger, execs: list[Any], crashed: set[str]) -> None:
    ledger.executions = len(execs)
    done: dict[tuple[str, datetime], int] = defaultdict(int)
    by_task: dict[str, list[Any]] = defaultdict(list)
    for r in execs:
        by_task[r.task].append(r)
        if r.finished is None:
            continue
        ledger.finished += 1
        if r.run_id in crashed:
            ledger.rerun_after_crash.append((r.task, r.scheduled_for))
        else:
            done[(r.task, r.scheduled_for)] += 1
    ledger.duplicates = [(t, s, n) for (t, s), n in done.items() if n > 1]
    for name, rows in by_task.items():
        latest_end: datetime | None = None
        latest_run = ""
        for r in sorted(rows, key=lambda r: r.started):
            if latest_end is not None and r.started < latest_end:
                ledger.overlaps.append((name, latest_run, r.run_id))
            end = r.finished or r.last_seen
            if latest_end is None or end > latest_end:
                latest_end, latest_run = end, r.run_id


def _check_slots(ledger: Ledger, history: list[Any], task_rows: dict[str, Any]) -> None:
    finals: dict[str, dict[datetime, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for r in history:
        if r.outcome in FINAL and not r.triggered:
            finals[r.task_name][r.scheduled_for].append(r)
    for name, row in task_rows.items():
        period = period_of(row.schedule)
        slots = finals.get(name, {})
        if period is None or not slots:
            continue
        step = timedelta(seconds=period)
        ordered = sorted(slots)
        ledger.slots += len(ordered)
        ledger.double_final += [(name, s, len(slots[s])) for s in ordered if len(slots[s]) > 1]
        first = ordered[0]
        boundary = [*ordered, row.planned_run] if row.planned_run else ordered
        for here, nxt in itertools.pairwise(boundary):
            if (nxt - first) % step:
                ledger.off_grid.append((name, nxt))
                continue
            periods = (nxt - here) // step - 1
            missed = slots[here][-1].missed
            ledger.missed += missed
            if periods > missed:
                ledger.lost.append((name, here, periods - missed))
