"""The `takeover` scenario: a worker running a long task is killed with SIGKILL right
after it renewed its lease (the worst moment); seconds until a standby starts the task.

    python -m bench.scenarios.takeover takeover --url U ... --out result.json --workdir /tmp/x
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bench.child import ChildArgs, ChildResult
from bench.drivers.cronloop_fleet import (
    LEDGER,
    Fleet,
    WorkerError,
    aware,
    fleet_main,
    prepared,
    rows,
)
from tests.support.worker import WorkerProcess


def takeover(args: ChildArgs) -> ChildResult:
    """A `fleet_long` task (sleeps in 0.1 s steps with checkpoints) runs on one worker and
    a standby waits. We watch the task row's `lease_until`; the moment it changes (the
    owner just renewed its lease) the owner gets SIGKILL, so the lease has almost all of
    `lease_s` left: the worst case. takeover_s = the task's own ledger row written by the
    standby (`started`, first thing the task does) minus the kill time. The standby then
    owns the run, a new standby starts, and so on, `rounds` times; the max is reported."""
    p = args.params
    lease_s, poll_s = float(p.get("lease_s", 5)), float(p.get("poll_interval", 0.5))
    rounds, slack_s = int(p.get("rounds", 3)), float(p.get("slack_s", 0.5))
    bound_s = lease_s + poll_s
    # one server, one clock: no skew to allow for (it would add to every takeover)
    flags = [f"--lease_s={lease_s}", f"--poll_interval={poll_s}", "--shutdown_grace=2"]
    flags.append("--max_clock_skew_s=0")
    result = ChildResult()
    samples: list[float] = []
    with prepared(args, "takeover", long_s=600.0) as setup, Fleet(setup, flags) as fleet:
        owner = fleet.start()
        execution(setup.engine, owner, timeout=120)
        for _ in range(rounds):
            standby = fleet.start_ready(1)[0]
            time.sleep(poll_s * 2)  # the standby has tried (and failed) to claim it
            wait_for_renewal(setup.engine, timeout=lease_s)
            killed_at = time.time()
            owner.kill()
            row = execution(setup.engine, standby, timeout=bound_s + 60)
            samples.append(aware(row.started).timestamp() - killed_at)
            owner = standby
        result.notes += fleet.stop()
        abandoned = rows(
            setup.engine,
            "SELECT COUNT(*) AS n FROM cronloop_run "
            "WHERE task_name = 'fleet_long' "
            "AND outcome = 'abandoned'",
        )[0].n
    worst = max(samples)
    result.figures.update(
        takeover_s=round(worst, 3),
        takeover_min_s=round(min(samples), 3),
        bound_s=bound_s,
        ok=int(worst <= bound_s + slack_s),
        abandoned_recorded=abandoned,
        rounds=rounds,
    )
    result.samples["takeover_s"] = [round(s, 3) for s in samples]
    result.notes.append(
        f"takeover: lease_s={lease_s:g}, poll_interval={poll_s:g}; SIGKILL "
        f"right after a lease renewal; ok = max <= bound + {slack_s:g}s "
        f"(claim round trip, process scheduling)"
    )
    return result


def execution(engine: Engine, worker: WorkerProcess, timeout: float) -> Any:
    """The ledger row `fleet_long` wrote when it started on `worker`."""
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while True:
            found = conn.execute(
                sa.text(f"SELECT started FROM {LEDGER} WHERE task = 'fleet_long' AND pid = :p"),
                {"p": worker.pid},
            ).first()
            if found is not None:
                return found
            if time.monotonic() > deadline or worker.proc.poll() is not None:
                raise WorkerError(
                    f"{worker.label} (pid {worker.pid}) did not start "
                    f"fleet_long within {timeout:g}s:\n{worker.tail()}"
                )
            time.sleep(0.02)


def wait_for_renewal(engine: Engine, timeout: float) -> None:
    """Return as soon as `fleet_long`'s lease_until moves (a renewal), polled every 10 ms
    over one autocommit connection."""
    query = sa.text("SELECT lease_until FROM cronloop_task WHERE name = 'fleet_long'")
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        first = conn.execute(query).scalar()
        while conn.execute(query).scalar() == first:
            if time.monotonic() > deadline:
                raise WorkerError(f"fleet_long's lease was not renewed within {timeout:g}s")
            time.sleep(0.01)


SCENARIOS: dict[str, Callable[[ChildArgs], ChildResult]] = {"takeover": takeover}

if __name__ == "__main__":
    fleet_main(SCENARIOS)
