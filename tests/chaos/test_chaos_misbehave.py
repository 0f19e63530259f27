"""Tasks that misbehave, side by side with one that behaves.

- swallows cancellation, exceeds its deadline, raises: contained, recorded, quarantined
  after `quarantine_timeouts` timeouts in a row, and never two executions at once;
- blocks the event loop: the watchdog thread dumps the stacks, strikes the culprit and
  exits 70 (first with a probe loop of our own, then the real `cronloop run`); systemd's
  restarts are played by the test; after `quarantine_strikes` the task is quarantined;
- all along, the well-behaved `steady` (every second) starts within the poll interval of
  its slot and loses nothing but the restarts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .harness import HERE, LEASE_S, POLL_S, ChaosDB, Fleet, base_env, wait_until
from .ledger import audit

WATCHDOG_S = 2.0


def steady_slips(db: ChaosDB) -> list[float]:
    return [
        float(r.slip)
        for r in db.rows(
            "SELECT TIMESTAMPDIFF(MICROSECOND, scheduled_for, started) / 1e6 AS slip "
            "FROM cronloop_chaos_exec WHERE task = 'steady' ORDER BY started"
        )
    ]


def status_of(fleet: Fleet) -> dict[str, Any]:
    proc = fleet.cli("status", "--json")
    assert proc.rc == 0, str(proc)
    return {row["name"]: row for row in json.loads(proc.out)}


def test_swallow_overrun_raise_beside_a_steady_task(
    fleet: Fleet, chaos_db: ChaosDB, report: dict[str, Any]
) -> None:
    chaos = {
        "CHAOS_MISBEHAVE": "swallower,overrunner,raiser",
        "CHAOS_STEADY": "1",
        "CHAOS_TIMEOUT": "1",
        "CHAOS_SWALLOW_S": "5",
    }
    # a lifetime, so a left-behind task is waited for (lease held) rather than restarted
    w = fleet.start("--quarantine_timeouts=2", "--max_lifetime=600", chaos=chaos)
    w.wait_for("worker started", timeout=60)
    wait_until(
        lambda: (
            {"swallower", "overrunner"}
            <= set(
                r.name
                for r in chaos_db.rows(
                    "SELECT name FROM cronloop_task WHERE status = 'quarantined'"
                )
            )
        ),
        40,
        "swallower and overrunner to be quarantined",
    )
    time.sleep(2)
    assert w.proc.poll() is None, w.tail()
    status = status_of(fleet)
    assert fleet.stop_all() == [0], w.tail()

    ledger = audit(chaos_db)
    slips = steady_slips(chaos_db)
    outcomes = {
        (r.task_name, r.outcome): r.n
        for r in chaos_db.rows(
            "SELECT task_name, outcome, COUNT(*) AS n FROM cronloop_run GROUP BY task_name, outcome"
        )
    }
    retries = chaos_db.scalar(
        "SELECT COUNT(*) FROM cronloop_run WHERE task_name = 'raiser' AND triggered = 1"
    )
    report.update(
        steady_runs=len(slips),
        steady_max_slip_s=round(max(slips), 3),
        outcomes={f"{t}:{o}": n for (t, o), n in sorted(outcomes.items())},
        **ledger.counts(),
    )
    for name in ("swallower", "overrunner"):
        assert status[name]["status"] == "quarantined", status[name]
        assert "timed out 2 times in a row" in status[name]["status_reason"], status[name]
        assert outcomes[(name, "timed_out")] == 2
    assert "ignored cancellation" in (
        chaos_db.scalar("SELECT error FROM cronloop_run WHERE task_name = 'swallower' LIMIT 1")
        or ""
    )
    assert outcomes[("raiser", "failed")] >= 3 and retries >= 2
    assert status["raiser"]["consecutive_failures"] >= 1
    assert status["steady"]["status"] == "active" and status["steady"]["consecutive_failures"] == 0
    assert len(slips) >= 10 and max(slips) <= POLL_S, slips
    ledger.assert_clean()


def _add_task_rows(db: ChaosDB, *names: str) -> None:
    with db.engine.begin() as conn:
        for name in names:
            conn.exec_driver_sql(
                "INSERT INTO cronloop_task (name, status, schedule, created, updated) "
                f"VALUES ('{name}', 'active', 'every 1s', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
            )


def test_watchdog_probe_exits_70_dumps_stacks_and_strikes(
    chaos_db: ChaosDB, tmp_path: Path, report: dict[str, Any]
) -> None:
    """The watchdog module in a loop of our own, before the service uses it."""
    _add_task_rows(chaos_db, "sleeper", "bystander")
    url = chaos_db.url.set(drivername="mysql+aiomysql").render_as_string(hide_password=False)
    detections = []
    for attempt in (1, 2):
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "stall_probe.py"), url, str(WATCHDOG_S)],
            env=base_env(),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "healthy"  # two windows of beats: no exit
        healthy_at = time.monotonic()
        _, err = proc.communicate(timeout=30)
        detections.append(time.monotonic() - healthy_at)
        assert proc.returncode == 70, err
        assert "most recent call first" in err and "in sleeper" in err  # faulthandler
        (event,) = [
            json.loads(line)
            for line in err.splitlines()
            if line.startswith("{") and "event loop blocked" in line
        ]
        assert event["running_tasks"] == ["bystander", "sleeper"]
        assert event["blamed"] == ["sleeper"]
        assert "time.sleep(60)" in event["stacks"]
        strikes = chaos_db.rows(
            "SELECT name, strikes, status, status_reason FROM cronloop_task ORDER BY name"
        )
        assert [(r.name, r.strikes) for r in strikes] == [("bystander", 0), ("sleeper", attempt)]
    sleeper = strikes[1]
    report.update(detected_after_s=[round(d, 2) for d in detections], watchdog_s=WATCHDOG_S)
    assert sleeper.status == "quarantined"
    assert re.match(r"blocked the event loop for [23] s, 2 strikes", sleeper.status_reason)
    # the stall counts from the last beat, which may be up to one beat (a quarter of the
    # window) before `healthy` was printed
    assert all(WATCHDOG_S * 0.75 <= d <= WATCHDOG_S + 2.0 for d in detections), detections


def test_service_blocked_by_a_task_exits_70_and_quarantines_it(
    fleet: Fleet, chaos_db: ChaosDB, report: dict[str, Any]
) -> None:
    """The real `cronloop run`; the test restarts it as systemd would (Restart=always)."""
    chaos = {"CHAOS_MISBEHAVE": "blocker", "CHAOS_STEADY": "1", "CHAOS_BLOCK_S": "30"}
    args = (f"--watchdog_s={WATCHDOG_S:g}", "--quarantine_strikes=2")
    exits, crashed = [], set()
    for attempt in (1, 2):
        w = fleet.start(*args, chaos=chaos, label=f"run{attempt}")
        rc = w.wait(timeout=30)
        exits.append(rc)
        crashed.add(w.pid)
        assert rc == 70, w.tail()
        (event,) = w.find("event loop blocked; exiting so the service restarts")
        assert event["blamed"] == ["blocker"], event
        assert "time.sleep" in event["stacks"]
        assert any("most recent call first" in line for line in w.lines)
    survivor = fleet.start(*args, chaos=chaos, label="run3")
    survivor.wait_for("worker started", timeout=60)
    # steady may have been claimed beside the blocker by the crashed run: its lease must
    # expire first (LEASE_S), then it runs every second again
    wait_until(
        lambda: (
            chaos_db.scalar("SELECT COUNT(*) FROM cronloop_chaos_exec WHERE task = 'steady'") >= 3
        ),
        LEASE_S + 15,
        "steady to run three times after the restarts",
    )
    status = status_of(fleet)
    assert fleet.stop_all()[-1] == 0, survivor.tail()

    resumed = fleet.cli("resume", "blocker")
    after = status_of(fleet)
    strikes = dict(chaos_db.rows("SELECT name, strikes FROM cronloop_task"))
    ledger = audit(chaos_db, tasks=["steady"], crashed_pids=crashed)
    slips = steady_slips(chaos_db)
    report.update(
        exits=exits,
        blocker_status=status["blocker"]["status"],
        steady_runs=len(slips),
        **ledger.counts(),
    )
    assert status["blocker"]["status"] == "quarantined", status["blocker"]
    assert "blocked the event loop" in status["blocker"]["status_reason"]
    assert strikes.get("steady", 0) == 0  # the bystander is not blamed
    assert chaos_db.scalar("SELECT COUNT(*) FROM cronloop_chaos_exec WHERE task = 'blocker'") == 2
    assert strikes["blocker"] == 0  # resume clears them
    assert resumed.rc == 0 and after["blocker"]["status"] == "active"
    assert len(slips) >= 3
    ledger.assert_clean()
