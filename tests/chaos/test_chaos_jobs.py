"""Chaos during a drain of the job queue, on MariaDB with real workers: a worker killed
with -9, and the database gone for 10 s (through `proxy.TcpProxy`); and a job that blocks
the event loop of every worker that runs it, until it is quarantined.

The evidence is the handler's own table (`chaos_jobs`: one row per attempt that did its
work), not cronloop's. What must hold: every job done (0 lost, none in error or
quarantined); a job done twice only when an attempt's record was lost with its lease
(its row shows more than one attempt), and no more of them than were in flight (the
documented at-least-once window: workers x `max_concurrency`).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from .chaos_jobs import DDL
from .harness import ChaosDB, Fleet, wait_until
from .proxy import TcpProxy

JOBS = 400
MAX_CONCURRENCY = 8
CHAOS = {"CHAOS_JOB_S": "0.2"}  # each attempt's work: a worker is always mid-job
ARGS = ("--task_modules=chaos_jobs", f"--max_concurrency={MAX_CONCURRENCY}")
DRAIN_TIMEOUT_S = 120.0


@pytest.fixture
def jobs_db(chaos_db: ChaosDB) -> ChaosDB:
    with chaos_db.engine.begin() as conn:
        conn.exec_driver_sql(DDL)
        conn.exec_driver_sql(
            "INSERT INTO cronloop_job (kind, args, run_at, created) "
            "WITH RECURSIVE seq (n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM seq "
            f"WHERE n < {JOBS - 1}) SELECT 'chaos_job', CONCAT('{{\"n\": ', n, '}}'), "
            "UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) FROM seq"
        )
    return chaos_db


def done_count(db: ChaosDB) -> int:
    return int(db.scalar("SELECT COUNT(*) FROM cronloop_job WHERE state = 'done'") or 0)


def executed(db: ChaosDB) -> int:
    return int(db.scalar("SELECT COUNT(DISTINCT n) FROM cronloop_chaos_job_exec") or 0)


def audit(db: ChaosDB, in_flight: int) -> dict[str, Any]:
    """Check the drain's outcome; what was measured, for the report."""
    states = Counter(dict(db.rows("SELECT state, COUNT(*) FROM cronloop_job GROUP BY state")))
    assert states == Counter({"done": JOBS}), states  # none lost, in error or quarantined
    runs = Counter(n for (n,) in db.rows("SELECT n FROM cronloop_chaos_job_exec"))
    assert set(runs) == set(range(JOBS))  # every job's work was done
    twice = {n for n, count in runs.items() if count > 1}
    attempts = {
        int(n): int(a)
        for n, a in db.rows(
            "SELECT CAST(JSON_VALUE(args, '$.n') AS INTEGER), attempts FROM cronloop_job"
        )
    }
    assert all(attempts[n] >= runs[n] for n in twice), (twice, attempts)  # a lost record each
    assert len(twice) <= in_flight, twice
    return {
        "jobs": JOBS,
        "done_twice": len(twice),
        "retried_or_taken_over": sum(1 for a in attempts.values() if a > 1),
        "taken_over": int(db.scalar("SELECT COUNT(*) FROM cronloop_job WHERE strikes > 0")),
    }


def test_a_worker_killed_mid_drain_loses_no_job(
    fleet: Fleet, jobs_db: ChaosDB, report: dict[str, Any]
) -> None:
    workers = [fleet.start(*ARGS, chaos=CHAOS) for _ in range(3)]
    for w in workers:
        w.wait_for("worker started", timeout=60)
    # its third batch began: those attempts are in flight (0.2 s of work each)
    workers[0].wait_for("chaos job began", count=2 * MAX_CONCURRENCY + 1, timeout=60)
    workers[0].kill()  # their leases expire, and they are taken over
    killed_at = time.monotonic()
    wait_until(lambda: done_count(jobs_db) == JOBS, DRAIN_TIMEOUT_S, "every job done")
    report["drain_after_kill_s"] = round(time.monotonic() - killed_at, 1)
    for w in workers[1:]:
        w.signal()
        assert w.wait() == 0, w.tail()
    report.update(audit(jobs_db, in_flight=MAX_CONCURRENCY))
    assert 1 <= report["taken_over"] <= MAX_CONCURRENCY, report


def test_a_database_outage_mid_drain_loses_no_job(
    fleet: Fleet, jobs_db: ChaosDB, proxy: TcpProxy, report: dict[str, Any]
) -> None:
    workers = [fleet.start(*ARGS, chaos=CHAOS, port=proxy.port) for _ in range(2)]
    for w in workers:
        w.wait_for("worker started", timeout=60)
    wait_until(lambda: executed(jobs_db) >= JOBS // 5, 60, "a fifth of the jobs done")
    proxy.cut()
    time.sleep(10.0)  # the outage itself: nothing to wait for
    assert all(w.alive for w in workers), [w.tail() for w in workers]
    proxy.restore()
    back_at = time.monotonic()
    wait_until(lambda: done_count(jobs_db) == JOBS, DRAIN_TIMEOUT_S, "every job done")
    report["drain_after_outage_s"] = round(time.monotonic() - back_at, 1)
    for w in workers:
        assert w.find("database reachable again"), w.tail()
        w.signal()
        assert w.wait() == 0, w.tail()
    report.update(audit(jobs_db, in_flight=2 * MAX_CONCURRENCY))


def test_a_job_that_blocks_the_loop_is_quarantined_and_no_task_struck(
    fleet: Fleet, chaos_db: ChaosDB, report: dict[str, Any]
) -> None:
    """The real `cronloop run`, restarted as systemd would: the job blocks the loop, the
    watchdog names it (not the steady task beside it) and exits 70; the next worker takes
    the attempt over once its lease expires (strike 1) and is blocked too; the third
    quarantines the job at its second takeover and keeps running the steady task."""
    with chaos_db.engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO cronloop_job (kind, args, run_at, created) "
            "VALUES ('loop_blocker', '{}', UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))"
        )
    chaos = {"CHAOS_STEADY": "1", "CHAOS_BLOCK_S": "30"}
    args = ("--task_modules=chaos_tasks,chaos_jobs", "--watchdog_s=2", "--quarantine_strikes=2")
    exits = []
    for attempt in (1, 2):
        w = fleet.start(*args, chaos=chaos, label=f"run{attempt}")
        w.wait_for("loop blocker began", timeout=30)
        exits.append(w.wait(timeout=30))
        (event,) = w.find("event loop blocked; exiting so the service restarts")
        assert event["blamed"] == ["loop_blocker"], event
    survivor = fleet.start(*args, chaos=chaos, label="run3")
    survivor.wait_for("job quarantined: its worker was lost", strikes=2, timeout=30)
    steady_before = steady_runs(chaos_db)
    survivor.wait_for("run finished", task="steady", outcome="success", timeout=30)
    assert fleet.stop_all()[-1] == 0, survivor.tail()
    assert not survivor.find("loop blocker began")
    [(state, strikes, attempts, reason)] = chaos_db.rows(
        "SELECT state, strikes, attempts, last_error FROM cronloop_job"
    )
    task_strikes = dict(chaos_db.rows("SELECT name, strikes FROM cronloop_task"))
    report.update(exits=exits, job_state=state, job_strikes=strikes, steady_runs=steady_before)
    assert exits == [70, 70]
    assert (state, strikes, attempts) == ("quarantined", 2, 2)
    assert "cronloop retry" in reason
    assert task_strikes.get("steady") == 0  # the bystander is not blamed
    jobs = json.loads(fleet.cli("jobs", "--json").out)
    assert [(j["job"], j["state"]) for j in jobs] == [("loop_blocker", "quarantined")]


def steady_runs(db: ChaosDB) -> int:
    return int(db.scalar("SELECT COUNT(*) FROM cronloop_chaos_exec WHERE task = 'steady'") or 0)
