"""The ledger that the chaos tests trust: it must see every kind of bad run (fast, no
database: rows are given as they would be read)."""

from __future__ import annotations

from datetime import datetime, timedelta
from types import SimpleNamespace as Row
from typing import Any

from .ledger import audit

T0 = datetime(2026, 1, 1, 12, 0, 0)
S = timedelta(seconds=1)


class FakeDB:
    def __init__(self, execs: list[Any], history: list[Any], tasks: list[Any]) -> None:
        self.tables = {
            "cronloop_chaos_exec": execs,
            "cronloop_run": history,
            "cronloop_task": tasks,
        }

    def rows(self, sql: str, **_: Any) -> list[Any]:
        table = next(name for name in self.tables if f"FROM {name}" in sql)
        return self.tables[table]


def ex(run: str, slot: int, start: float, end: float | None, pid: int = 1, seen: float = 0) -> Row:
    return Row(
        run_id=run,
        task="t",
        scheduled_for=T0 + slot * S,
        pid=pid,
        started=T0 + timedelta(seconds=start),
        last_seen=T0 + timedelta(seconds=end if end is not None else seen),
        finished=T0 + timedelta(seconds=end) if end is not None else None,
    )


def hist(
    run: str, slot: int, outcome: str = "success", missed: int = 0, triggered: bool = False
) -> Row:
    return Row(
        run_id=run,
        task_name="t",
        scheduled_for=T0 + slot * S,
        outcome=outcome,
        missed=missed,
        triggered=triggered,
    )


def task(planned: int) -> list[Row]:
    return [Row(name="t", schedule="every 1s", planned_run=T0 + planned * S, lease_token=None)]


def clean_run() -> tuple[list[Row], list[Row]]:
    execs = [ex("a", 0, 0.0, 0.1), ex("b", 1, 1.0, 1.1), ex("c", 3, 3.0, 3.1)]
    history = [hist("a", 0), hist("b", 1, missed=1), hist("c", 3)]
    return execs, history


def test_a_clean_history_is_clean() -> None:
    execs, history = clean_run()
    ledger = audit(FakeDB(execs, history, task(4)))
    ledger.assert_clean()
    assert ledger.counts() == {
        "executions": 3,
        "finished": 3,
        "slots": 3,
        "missed": 1,
        "duplicates": 0,
        "rerun_after_crash": 0,
        "overlaps": 0,
        "lost": 0,
    }


def test_a_slot_finished_twice_is_a_duplicate() -> None:
    execs, history = clean_run()
    execs.append(ex("b2", 1, 2.0, 2.1, pid=2))
    assert audit(FakeDB(execs, history, task(4))).duplicates == [("t", T0 + S, 2)]


def test_a_rerun_after_a_crash_is_counted_apart() -> None:
    execs, history = clean_run()
    execs.append(ex("b0", 1, 0.5, 0.6, pid=9))
    history.append(hist("b0", 1, outcome="abandoned"))
    ledger = audit(FakeDB(execs, history, task(4)), crashed_pids={9})
    assert ledger.duplicates == [] and ledger.rerun_after_crash == [("t", T0 + S)]
    assert audit(FakeDB(execs, history, task(4))).duplicates  # unless the pid crashed


def test_overlapping_executions_are_seen_even_unfinished() -> None:
    execs, history = clean_run()
    execs.append(ex("z", 1, 0.9, None, pid=2, seen=1.05))  # a zombie still at work at 1.05
    assert audit(FakeDB(execs, history, task(4))).overlaps == [("t", "z", "b")]


def test_a_slot_neither_run_nor_missed_is_lost() -> None:
    execs, history = clean_run()
    history[1] = hist("b", 1, missed=0)  # slot 2 skipped silently
    assert audit(FakeDB(execs, history, task(4))).lost == [("t", T0 + S, 1)]
    # and the slots between the last run and the next planned one count too
    assert audit(FakeDB(*clean_run(), task(6))).lost == [("t", T0 + 3 * S, 2)]


def test_stuck_rows_and_unrecorded_successes() -> None:
    execs, history = clean_run()
    history.append(hist("d", 4, outcome="running"))
    history.append(hist("e", 5))  # success in history, but the task never finished it
    rows = task(6)
    rows[0].lease_token = "tok"
    ledger = audit(FakeDB(execs, history, rows))
    assert ledger.stuck == ["lease held: t", "history running: t d"]
    assert ledger.unrecorded_success == ["e"]
