"""Several workers racing on one task table: every due run executes exactly once.

200 tasks every second, all due at once at the start, for 20 s, four `cronloop run`
processes: about 4 000 due runs. Nothing may run twice, nothing may be lost, and the
work must actually be shared.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from .harness import ChaosDB, Fleet
from .ledger import audit

TASKS = 200
PERIOD_S = 1
RUN_FOR_S = 20
WORKERS = 4


def test_four_workers_race_for_thousands_of_runs(
    fleet: Fleet, chaos_db: ChaosDB, report: dict[str, Any]
) -> None:
    chaos = {"CHAOS_RACE": f"{TASKS}:{PERIOD_S}"}
    for _ in range(WORKERS):
        fleet.start("--max_concurrency=10", chaos=chaos)
    for w in fleet.workers:
        w.wait_for("worker started", timeout=60)
    time.sleep(RUN_FOR_S)  # the race runs this long: nothing to wait for but the clock
    codes = fleet.stop_all()
    assert codes == [0] * WORKERS, [w.tail() for w in fleet.workers]

    errors = Counter(
        e["event"]
        for w in fleet.workers
        for e in w.events
        if e.get("level") in ("error", "critical")
    )
    ledger = audit(chaos_db)
    by_pid = Counter(r.pid for r in chaos_db.rows("SELECT pid FROM cronloop_chaos_exec"))
    report.update(
        workers=WORKERS,
        tasks=TASKS,
        seconds=RUN_FOR_S,
        **ledger.counts(),
        per_worker=sorted(by_pid.values()),
        errors_logged=sum(errors.values()),
    )
    ledger.assert_clean()
    assert not errors, f"a clean race must not log errors: {errors}"
    assert ledger.finished >= TASKS * RUN_FOR_S / PERIOD_S * 0.5, ledger.counts()
    assert len(by_pid) == WORKERS and min(by_pid.values()) > ledger.finished / WORKERS / 4, by_pid
