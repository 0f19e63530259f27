"""The database goes away while workers run: stopped, dropping connections, partitioned.

The workers reach MariaDB through `proxy.TcpProxy`, which the test breaks (the shared
server itself is never touched). Through every outage: the workers keep running, log one
clear error (then reminders at a reduced rate), resume by themselves, and the ledger
shows no duplicate, no overlapping and no lost run, and no stuck row.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from tests.support.worker import WorkerProcess

from .harness import LEASE_S, ChaosDB, Fleet, read_trace, wait_until
from .ledger import audit
from .proxy import TcpProxy

OUTAGE_S = 20.0
RESUME_BOUND_S = 15.0  # after the database is back, each worker runs tasks again within this
MAX_CONCURRENCY = 10


def last_start_by(db: ChaosDB, pid: int) -> float:
    value = db.scalar(
        "SELECT UNIX_TIMESTAMP(MAX(started)) FROM cronloop_chaos_exec WHERE pid = :pid", pid=pid
    )
    return float(value or 0)


def errors_between(
    w: WorkerProcess, start: float, end: float, levels: tuple[str, ...] = ("error",)
) -> Counter[str]:
    return Counter(
        e["event"] for e in w.events if e.get("level") in levels and start <= e["_t"] <= end
    )


def test_database_stopped_for_20s_workers_ride_it_out(
    fleet: Fleet, chaos_db: ChaosDB, proxy: TcpProxy, report: dict[str, Any]
) -> None:
    chaos = {"CHAOS_RACE": "30:1"}
    workers = [
        fleet.start(f"--max_concurrency={MAX_CONCURRENCY}", chaos=chaos, port=proxy.port)
        for _ in range(2)
    ]
    for w in workers:
        w.wait_for("worker started", timeout=60)
    time.sleep(5)
    cut_at = time.time()
    proxy.cut()
    time.sleep(OUTAGE_S)
    assert all(w.proc.poll() is None for w in workers), [w.tail() for w in workers]
    back_at = time.time()
    proxy.restore()
    resumed = {}
    for w in workers:
        wait_until(
            lambda w=w: last_start_by(chaos_db, w.pid) > back_at,
            RESUME_BOUND_S + 20,
            f"{w.label} to run tasks again",
        )
        resumed[w.label] = round(last_start_by(chaos_db, w.pid) - back_at, 1)
    time.sleep(3)
    assert fleet.stop_all() == [0, 0], [w.tail() for w in workers]

    ledger = audit(chaos_db)
    outage_errors = [errors_between(w, cut_at, back_at) for w in workers]
    report.update(
        outage_s=OUTAGE_S,
        resumed_after_s=resumed,
        errors_during_outage=[sum(c.values()) for c in outage_errors],
        **ledger.counts(),
    )
    for w, errors in zip(workers, outage_errors, strict=True):
        assert errors["database unreachable; retrying with backoff"] == 1, errors
        # runs caught by the cut may each say so; after that, only reminders, rarely
        assert sum(errors.values()) <= 1 + 2 * MAX_CONCURRENCY, f"{w.label}: {errors}"
        later = errors_between(w, cut_at + 5, back_at, ("error", "warning"))
        assert sum(later.values()) <= 1, f"{w.label} kept logging: {later}"
        assert w.find("database reachable again"), w.tail()
    assert max(resumed.values()) <= RESUME_BOUND_S, resumed
    ledger.assert_clean()


def test_connections_dropped_mid_query(
    fleet: Fleet, chaos_db: ChaosDB, proxy: TcpProxy, report: dict[str, Any]
) -> None:
    chaos = {"CHAOS_RACE": "30:1"}
    workers = [fleet.start(chaos=chaos, port=proxy.port) for _ in range(2)]
    for w in workers:
        w.wait_for("worker started", timeout=60)
    proxy.flaky(0.01)  # about one chunk in a hundred resets its connection
    time.sleep(20)
    proxy.flaky(0.0)
    time.sleep(LEASE_S + 2)  # leases of claims whose answer was lost expire and are retaken
    assert fleet.stop_all() == [0, 0], [w.tail() for w in workers]

    ledger = audit(chaos_db)
    report.update(resets=proxy.stats.resets, connections=proxy.stats.connections, **ledger.counts())
    assert proxy.stats.resets >= 20, proxy.stats
    ledger.assert_clean()


def test_partitioned_worker_stops_its_run_before_the_takeover(
    fleet: Fleet, chaos_db: ChaosDB, proxy: TcpProxy, tmp_path: Any, report: dict[str, Any]
) -> None:
    """A network partition (no reset, no answer: queries hang) between the owner and the
    database: its renewals hang, yet its run must stop before the lease runs out, since
    the standby, which still reaches the database, takes the run over then."""
    trace = tmp_path / "trace"
    chaos = {"CHAOS_LONG": "10", "CHAOS_TRACE": str(trace), "CHAOS_LONG_DB": "0"}
    a = fleet.start(chaos=chaos, port=proxy.port, label="A")
    a.wait_for("chaos long started", timeout=60)
    b = fleet.start(chaos=chaos, label="B")  # direct, not through the proxy
    b.wait_for("worker started", timeout=60)
    time.sleep(1)
    cut_at = time.time()
    proxy.blackhole()
    b.wait_for("chaos long started", timeout=LEASE_S + 15)
    steps = wait_until(
        lambda: (s := read_trace(trace)) and any(v[0][0] == b.pid for v in s.values()) and s,
        5,
        "B's first step",
    )
    (a_run,) = [r for r, s in steps.items() if s[0][0] == a.pid]
    (b_run,) = [r for r, s in steps.items() if s[0][0] == b.pid]
    time.sleep(3)
    proxy.heal()
    b.wait_for("run finished", timeout=30, task="long")
    a.wait_for("database reachable again", timeout=30)
    a_alive = a.proc.poll() is None
    assert fleet.stop_all() == [0, 0], a.tail()

    steps = read_trace(trace)
    a_last = max(t for _, t in steps[a_run])
    b_first = min(t for _, t in steps[b_run])
    report.update(
        a_last_step_after_cut_s=round(a_last - cut_at, 2),
        b_first_step_after_cut_s=round(b_first - cut_at, 2),
        margin_s=round(b_first - a_last, 2),
        a_alive=a_alive,
    )
    assert a_last < b_first, "the partitioned worker was still running the task when B took it"
    assert a_alive
    assert a.find("run finished", task="long", outcome="abandoned"), a.tail()
    audit(chaos_db).assert_clean(allow_unrecorded=True)  # this run writes its steps to a file only
