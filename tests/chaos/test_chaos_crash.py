"""A worker dies (kill -9) or freezes (SIGSTOP) in the middle of a long run.

The run must be taken over by the other worker once its lease expires (lease 5 s, poll
0.5 s), recorded `abandoned`, and never run by two processes at once: the frozen worker,
once thawed, must not write over the new owner nor do one more step of the task. The
task leaves a local trace file per step (`CHAOS_TRACE`), so a step is seen even when it
wrote nothing to the database.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from .harness import (
    LEASE_S,
    POLL_S,
    ChaosDB,
    Fleet,
    execution_of,
    read_trace,
    start_owner_and_standby,
    utc,
    wait_until,
)
from .ledger import audit

CLAIM_SLACK_S = 1.0  # a claim round trip and process scheduling on a busy 2-core machine


def test_kill_9_mid_run_is_taken_over_within_lease_plus_poll(
    fleet: Fleet, chaos_db: ChaosDB, tmp_path: Path, report: dict[str, Any]
) -> None:
    chaos = {"CHAOS_LONG": "8", "CHAOS_TRACE": str(tmp_path / "trace")}
    a, b = start_owner_and_standby(fleet, chaos)
    cpu_before = b.cpu_s()
    time.sleep(3)  # B waits while A works: it must idle, not spin on the database
    standby_cpu = (b.cpu_s() - cpu_before) / 3

    killed_at = time.time()
    a.proc.send_signal(signal.SIGKILL)
    assert a.wait() == -signal.SIGKILL
    b.wait_for("chaos long started", timeout=LEASE_S + POLL_S + 15)
    taken = execution_of(chaos_db, b.pid)
    takeover_s = utc(taken.started) - killed_at
    wait_until(
        lambda: (row := execution_of(chaos_db, b.pid)) and row.finished,
        30,
        "B to finish the run it took over",
    )
    assert fleet.stop_all()[1] == 0

    lost_run = execution_of(chaos_db, a.pid)
    history = {r.run_id: r for r in chaos_db.rows("SELECT * FROM cronloop_run")}
    ledger = audit(chaos_db)
    report.update(
        takeover_s=round(takeover_s, 2),
        bound_s=LEASE_S + POLL_S,
        standby_cpu=round(standby_cpu, 3),
        **ledger.counts(),
    )
    assert history[lost_run.run_id].outcome == "abandoned"
    assert history[taken.run_id].outcome == "success"
    assert 0 < takeover_s <= LEASE_S + POLL_S + CLAIM_SLACK_S, takeover_s
    assert standby_cpu < 0.10, f"the idle worker used {standby_cpu:.0%} of a CPU"
    ledger.assert_clean()
    assert max(t for _, t in read_trace(tmp_path / "trace")[lost_run.run_id]) < killed_at


def test_sigstop_past_the_lease_then_sigcont_does_not_run_on(
    fleet: Fleet, chaos_db: ChaosDB, tmp_path: Path, report: dict[str, Any]
) -> None:
    trace = tmp_path / "trace"
    chaos = {"CHAOS_LONG": "8", "CHAOS_TRACE": str(trace)}
    # a watchdog window shorter than the freeze: a suspended process is not a blocked loop
    a, b = start_owner_and_standby(fleet, chaos, "--watchdog_s=2")
    time.sleep(1)
    stopped_at = time.time()
    a.signal(signal.SIGSTOP)
    b.wait_for("chaos long started", timeout=LEASE_S + POLL_S + 15)
    taken = execution_of(chaos_db, b.pid)
    time.sleep(1)  # the new owner is working: now the zombie wakes up
    resumed_at = time.time()
    a.signal(signal.SIGCONT)
    zombie_end = a.wait_for("run finished", timeout=20, task="long")
    wait_until(
        lambda: (row := execution_of(chaos_db, b.pid)) and row.finished,
        30,
        "B to finish the run it took over",
    )
    assert a.proc.poll() is None, "the thawed worker must keep running"
    assert fleet.stop_all() == [0, 0]

    zombie = execution_of(chaos_db, a.pid)
    zombie_steps = [t for _, t in read_trace(trace)[zombie.run_id]]
    late_steps = [t for t in zombie_steps if t >= resumed_at]
    history = {r.run_id: r for r in chaos_db.rows("SELECT * FROM cronloop_run")}
    row = chaos_db.rows("SELECT * FROM cronloop_task WHERE name = 'long'")[0]
    ledger = audit(chaos_db)
    report.update(
        stopped_s=round(resumed_at - stopped_at, 1),
        zombie_steps_after_sigcont=len(late_steps),
        zombie_outcome=zombie_end["outcome"],
        **ledger.counts(),
    )
    assert late_steps == [], "the thawed worker went on running the task"
    assert zombie_end["outcome"] == "abandoned" and not zombie_end.get("recorded")
    # fencing: the zombie's ending did not overwrite what the takeover wrote
    assert history[zombie.run_id].outcome == "abandoned"
    assert "worker running it was lost" in (history[zombie.run_id].error or "")
    assert history[taken.run_id].outcome == "success"
    assert (row.last_outcome, row.run_count, row.lease_token) == ("success", 1, None)
    ledger.assert_clean()
