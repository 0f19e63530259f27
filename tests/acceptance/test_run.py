"""`cronloop run` end to end: real processes, real signals, the real database.

Each test runs on the embedded SQLite file and, when `CRONLOOP_TEST_MYSQL_URL` is set, on
a MariaDB scratch database (the `cli` fixture). Waits are bounded and driven by the
worker's JSON log lines, never by sleeping for a guessed time.
"""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.worker import wait_for_total

if TYPE_CHECKING:
    from conftest import Cli, Event

DOCUMENTED_STATUS_KEYS = {
    "name",
    "status",
    "last_run",
    "next_run",
    "runs",
    "avg_duration",
    "min_duration",
    "max_duration",
    "last_outcome",
    "last_error",
    "running",
    "consecutive_failures",
}
POLL = "--poll_interval=0.2"


def finished(events: list[Event]) -> dict[str, Event]:
    """The `run finished` event of each task (the last one, if several)."""
    return {e["task"]: e for e in events if e.get("event") == "run finished"}


def when(text: str | None) -> datetime:
    assert text is not None
    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None, f"{text} is not timezone-aware"
    return value


def test_once_runs_every_due_task_once_and_status_shows_it(cli: Cli) -> None:
    before = datetime.now(UTC)
    result = cli.ok("run", "--once", tasks="quick,threaded,boom,nightly")
    ran = finished(result.events)
    assert {k: v["outcome"] for k, v in ran.items()} == {
        "quick": "success",
        "threaded": "success",
        "boom": "failed",
    }
    assert [e["runs"] for e in result.events if e.get("event") == "worker stopped"] == [3]

    status = cli.status()
    for name in ("quick", "threaded", "boom", "nightly"):
        assert set(status[name]) >= DOCUMENTED_STATUS_KEYS, name
    assert status["quick"]["runs"] == 1
    assert status["quick"]["last_outcome"] == "success"
    assert status["threaded"]["last_outcome"] == "success"
    assert status["boom"]["runs"] == 1
    assert status["boom"]["last_outcome"] == "failed"
    assert "kaboom from the sample task" in status["boom"]["last_error"]
    assert status["boom"]["consecutive_failures"] == 1
    assert status["nightly"]["runs"] == 0  # an `at=` task is not due at its first sync
    assert status["nightly"]["last_outcome"] is None
    assert when(status["nightly"]["next_run"]) > before
    assert when(status["quick"]["next_run"]) >= when(status["quick"]["last_run"]) + timedelta(
        seconds=3599
    )
    quick = status["quick"]
    assert quick["min_duration"] <= quick["avg_duration"] <= quick["max_duration"] < 5
    assert quick["running"] is False
    assert when(quick["last_run"]) >= before - timedelta(seconds=1)

    history = cli.history_rows()
    assert sorted((r["task_name"], r["outcome"]) for r in history) == [
        ("boom", "failed"),
        ("quick", "success"),
        ("threaded", "success"),
    ]

    again = cli.ok("run", "--once", tasks="quick,threaded,boom,nightly")
    assert finished(again.events) == {}, "nothing is due a second time"
    assert cli.status()["quick"]["runs"] == 1


def test_plain_log_lines_when_stderr_is_not_a_tty(cli: Cli) -> None:
    result = cli.ok("run", "--once", tasks="quick,boom", env={"CRONLOOP_LOG_FORMAT": None})
    lines = result.err.splitlines()
    assert any(
        line.startswith("<6>run finished task=quick run_id=")
        and "outcome=success" in line
        and "duration_ms=" in line
        for line in lines
    ), result.err
    assert any(
        line.startswith("<4>run finished task=boom") and "outcome=failed" in line for line in lines
    ), result.err
    # the traceback goes to the log, one prefixed line each
    assert any(line.startswith("<3>") and "Traceback" in line for line in lines), result.err
    assert any(line.startswith("<3>RuntimeError: kaboom from the sample task") for line in lines), (
        result.err
    )


def test_sigterm_drains_a_running_task(cli: Cli) -> None:
    worker = cli.start(POLL, "--shutdown_grace=20", tasks="long,quick")
    worker.wait_for("long started")
    worker.wait_for("run finished", task="quick")
    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait_for("long saw stop")["reason"] == "shutdown"
    end = worker.wait_for("run finished", task="long")
    assert end["outcome"] == "interrupted"
    assert worker.wait(10) == 0
    assert time.monotonic() - sent < 5, "a cooperative task must not wait for the grace"
    assert worker.find("signal received", signal="SIGTERM", action="drain")
    status = cli.status()["long"]
    assert status["last_outcome"] == "interrupted"
    assert status["consecutive_failures"] == 0
    assert [r["outcome"] for r in cli.history_rows("long")] == ["interrupted"]


def test_second_sigterm_during_drain_cancels_at_once(cli: Cli) -> None:
    worker = cli.start(POLL, "--shutdown_grace=30", tasks="stubborn")
    worker.wait_for("stubborn started")
    worker.signal(signal.SIGTERM)
    worker.wait_for("draining")
    sent = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert time.monotonic() - sent < 5, "the second signal must not wait for shutdown_grace"
    assert worker.find("signal received", action="abort")
    assert worker.find("run finished", task="stubborn")[0]["outcome"] == "interrupted"
    assert cli.status()["stubborn"]["last_outcome"] == "interrupted"
    assert [r["outcome"] for r in cli.history_rows("stubborn")] == ["interrupted"]


def test_max_lifetime_exits_75_and_the_cut_off_run_is_due_again(cli: Cli) -> None:
    started = time.monotonic()
    worker = cli.start(
        POLL, "--max_lifetime=2", "--lifetime_jitter_s=0", "--shutdown_grace=5", tasks="long,ticker"
    )
    worker.wait_for("long started")
    assert worker.wait(15) == 75
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 10, elapsed
    assert worker.find("max lifetime reached; draining for a planned restart")
    assert worker.find("run finished", task="long")[0]["outcome"] == "interrupted"
    ticks = [r for r in cli.history_rows("ticker") if r["outcome"] == "success"]
    assert len(ticks) >= 2, "runs during the lifetime are recorded"

    cut = cli.status()["long"]
    assert cut["last_outcome"] == "interrupted"
    assert when(cut["next_run"]) <= datetime.now(UTC), "an interrupted run is due at once"
    first = cli.history_rows("long")
    assert [r["outcome"] for r in first] == ["interrupted"]

    # the next worker runs the same slot again, at once
    restarted = cli.start(POLL, tasks="long")
    restarted.wait_for("long started", timeout=10)
    restarted.signal(signal.SIGTERM)
    assert restarted.wait(10) == 0
    rows = cli.history_rows("long")
    assert len(rows) == 2
    assert rows[1]["scheduled_for"] == rows[0]["scheduled_for"]


def test_deadlines_failures_and_the_loop_goes_on(cli: Cli) -> None:
    worker = cli.start(POLL, "--grace_s=0.5", tasks="slowpoke,sleeper,boom,ticker")
    slow = worker.wait_for("run finished", task="slowpoke")
    assert slow["outcome"] == "timed_out"
    assert 900 <= slow["duration_ms"] < 3000
    assert "deadline" in slow["error"]
    sleeper = worker.wait_for("run finished", task="sleeper")
    assert sleeper["outcome"] == "timed_out"
    assert 1400 <= sleeper["duration_ms"] < 4000, "cancelled after timeout + grace_s"
    assert "grace" in sleeper["error"]
    boom = worker.wait_for("run finished", task="boom")
    assert boom["outcome"] == "failed"
    assert boom["error"] == "RuntimeError: kaboom from the sample task"
    raised = worker.wait_for("task raised", task="boom")
    assert "Traceback (most recent call last)" in raised["exception"]
    assert "kaboom from the sample task" in raised["exception"]
    # the loop keeps running other tasks after the failures and the cancellation
    later = worker.mark()
    worker.wait_for("run finished", task="ticker", since=later, count=2, timeout=5)
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0

    status = cli.status()
    assert status["slowpoke"]["last_outcome"] == "timed_out"
    assert status["sleeper"]["last_outcome"] == "timed_out"
    assert "grace" in status["sleeper"]["last_error"]
    assert status["boom"]["last_outcome"] == "failed"
    assert status["boom"]["last_error"] == "RuntimeError: kaboom from the sample task"
    assert status["ticker"]["last_outcome"] == "success"
    assert status["ticker"]["consecutive_failures"] == 0


RESYNC_HEADER = "from cronloop import TaskContext, task\n"
RESYNC_X = """
@task(every=3600)
async def x(ctx: TaskContext) -> str:
    return "x"
"""
RESYNC_Y = RESYNC_X.replace("def x", "def y").replace('"x"', '"y"')


def synchronised(events: list[Event]) -> dict[str, Any]:
    found = [e for e in events if e.get("event") == "task table synchronised"]
    return found[0] if found else {}


def test_resync_marks_vanished_tasks_removed_and_back_active(cli: Cli) -> None:
    cli.write_module("resync_a", RESYNC_HEADER + RESYNC_X + RESYNC_Y)
    cli.write_module("resync_b", RESYNC_HEADER + RESYNC_X)
    first = cli.ok("run", "--once", "--task_modules=resync_a")
    assert set(finished(first.events)) == {"x", "y"}

    second = cli.ok("run", "--once", "--task_modules=resync_b")
    assert synchronised(second.events).get("removed") == ["y"]
    status = cli.status()
    assert (status["x"]["status"], status["y"]["status"]) == ("active", "removed")
    assert status["y"]["runs"] == 1, "a removed task keeps its figures"
    assert "removed" in cli.ok("status").out
    refused = cli.run("trigger", "y", "--task_modules=resync_b")
    assert refused.rc == 1 and "not active" in refused.err

    cli.ok("run", "--once", "--task_modules=resync_a")
    status = cli.status()
    assert (status["x"]["status"], status["y"]["status"]) == ("active", "active")


def test_bad_schedule_setting_disables_only_that_task(cli: Cli) -> None:
    params = cli.write_params("# ops overrides\nnightly.time = 9:30\n")
    result = cli.run("run", "--once", f"--param-file={params}", tasks="quick,nightly")
    assert result.rc == 0, str(result)
    assert set(finished(result.events)) == {"quick"}
    logged = [e for e in result.events if e.get("event") == "task disabled by a bad setting"]
    assert logged and logged[0]["task"] == "nightly"
    assert f"{params}:2" in logged[0]["error"] and "9:30" in logged[0]["error"]

    status = cli.status()
    assert status["nightly"]["status"] == "disabled"
    assert f"{params}:2" in status["nightly"]["status_reason"]
    assert "9:30" in status["nightly"]["status_reason"]
    assert status["quick"]["status"] == "active" and status["quick"]["runs"] == 1
    assert "disabled" in cli.ok("status").out

    fixed = cli.ok("run", "--once", tasks="quick,nightly")
    assert finished(fixed.events) == {}
    assert cli.status()["nightly"]["status"] == "active", "fixing the setting re-enables it"


def test_two_workers_never_run_a_slot_twice(cli: Cli) -> None:
    out = cli.cwd / "slots.txt"
    args = (POLL, f"--slot_writer.path={out}", "--shutdown_grace=5")
    workers = [cli.start(*args, tasks="slot_writer") for _ in range(2)]
    for worker in workers:
        worker.wait_for("worker started")
    wait_for_total(workers, "run finished", 12, timeout=20, task="slot_writer")
    for worker in workers:
        worker.signal(signal.SIGTERM)
    assert [worker.wait(15) for worker in workers] == [0, 0]

    slots = [line.split()[0] for line in out.read_text().splitlines()]
    assert len(slots) >= 12
    assert len(slots) == len(set(slots)), "a scheduled slot was executed twice"
    times = sorted(datetime.fromisoformat(s) for s in slots)
    for t in times:  # every slot is on the 0.5 s grid of the first one: no drift
        assert (t - times[0]) % timedelta(milliseconds=500) == timedelta(0), t
    history = [r for r in cli.history_rows("slot_writer") if r["outcome"] == "success"]
    assert len(history) == len({r["scheduled_for"] for r in history}) == len(slots)
    assert all(r["worker"] for r in history), "each run records the worker that ran it"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_worker_waiting_on_a_running_task_does_not_spin(cli: Cli) -> None:
    worker = cli.start(POLL, "--shutdown_grace=0.5", tasks="stubborn")
    worker.wait_for("stubborn started")
    before, since = worker.cpu_s(), time.monotonic()
    time.sleep(1.5)  # what is measured is what the worker does meanwhile
    share = (worker.cpu_s() - before) / (time.monotonic() - since)
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert share < 0.3, f"the worker used {share:.0%} of a core while its only task slept"
