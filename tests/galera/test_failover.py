"""Node failures on the real 3-node cluster (issue 11, item 5): workers with several hosts
(`database_hosts`, each worker preferring its own node) and workers with one.

- kill -9 of a node under load: its worker moves to the next node and keeps running,
  comes back to its own node once it has rejoined; no duplicate run;
- a node isolated from the cluster (`gmcast.isolate=1`: it drops out of the primary
  component and answers 1047): its single-host worker stops its run before its lease
  can expire (the run's last step is before the takeover's first), another node's
  worker takes it over, its multi-host worker moves to the next node; the node rejoins
  afterwards and the multi-host worker returns to it.

Each test leaves the cluster whole again. Runs are counted in the chaos tasks' own
table (`cronloop_chaos_exec`) and, for a long run, in a local trace file per step.
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

from tests.chaos.harness import read_trace
from tests.support.cli import migrate
from tests.support.env import CRONLOOP
from tests.support.env import base_env as support_env
from tests.support.galera import Cluster
from tests.support.worker import WorkerProcess, wait_for_total

from .test_galera_workers import CHAOS_DIR, START_TIMEOUT_S, make_exec_table, rows, stop

LEASE_S = 5.0
MOVED = "database host unusable; moving to the next"


def worker(
    cluster: Cluster,
    database: str,
    cwd: Path,
    env: dict[str, str],
    label: str,
    nodes: list[int],
    cond: threading.Condition,
) -> WorkerProcess:
    """A `cronloop run` on `nodes` (in order of preference; one node: no failover)."""
    argv = [
        str(CRONLOOP),
        "run",
        "--task_modules=chaos_tasks",
        "--max_lifetime=0",
        "--poll_interval=0.5",
        f"--lease_s={LEASE_S:g}",
        "--shutdown_grace=3",
        "--history_gc.retention_days=0",
        "--log_level=debug",
        f"--database_url={cluster.url(nodes[0], database)}",
    ]
    if len(nodes) > 1:
        hosts = ",".join(f"127.0.0.1:{cluster.nodes[i].sql_port}" for i in nodes)
        argv.append(f"--database_hosts={hosts}")
    return WorkerProcess(
        argv,
        env,
        cwd,
        label=label,
        log_path=cwd / f"{label}.log",
        cond=cond,
        dump_signal=signal.SIGUSR1,
    )


def chaos_env(foreign_off: dict[str, str], **chaos: str) -> dict[str, str]:
    return {**support_env(pythonpath=[CHAOS_DIR]), **foreign_off, **chaos}


def no_duplicates(cluster: Cluster, database: str) -> int:
    executions = rows(cluster, database, "SELECT task, scheduled_for FROM cronloop_chaos_exec")
    per_slot = Counter((task, when) for task, when in executions)
    duplicates = {slot: n for slot, n in per_slot.items() if n > 1}
    assert not duplicates, f"duplicate runs: {duplicates}"
    return len(executions)


def test_kill_9_of_the_preferred_node_moves_its_worker_on_and_back(
    galera: Cluster, galera_db: str, tmp_path: Path, foreign_tasks_off: dict[str, str]
) -> None:
    migrate(galera.url(0, galera_db), tmp_path)
    make_exec_table(galera, galera_db)
    tasks, cond = 10, threading.Condition()
    env = chaos_env(foreign_tasks_off, CHAOS_RACE=f"{tasks}:1")
    orders = [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    workers = [
        worker(galera, galera_db, tmp_path, env, f"multi{i}", order, cond)
        for i, order in enumerate(orders)
    ]
    victim = workers[2]
    try:
        wait_for_total(workers, "worker started", 3, START_TIMEOUT_S)
        wait_for_total(workers, "run finished", 3 * tasks, 30.0)
        mark = victim.mark()
        killed_at = time.monotonic()
        galera.nodes[2].kill()
        victim.wait_for(MOVED, timeout=30, since=mark)
        # on the next node (it may win no claim: the others' batches take every due run)
        victim.wait_for("connected to database host", timeout=30, since=mark, host=node(galera, 0))
        moved_s = time.monotonic() - killed_at
        before = sum(len(w.find("run finished")) for w in workers)
        wait_for_total(workers, "run finished", before + 3 * tasks, 30.0)
        back = victim.mark()
        galera.restart(2)
        victim.wait_for("connected to database host", timeout=60, since=back, host=node(galera, 2))
        assert galera.size() == 3
    finally:
        codes = stop(workers)
        _whole(galera)
    assert codes == [0, 0, 0]
    runs = no_duplicates(galera, galera_db)
    print(f"GALERA failover: runs={runs} victim on the next node {moved_s:.1f}s after the kill")


def test_an_isolated_node_stops_its_runs_in_time_and_its_multi_host_worker_moves_on(
    galera: Cluster, galera_db: str, tmp_path: Path, foreign_tasks_off: dict[str, str]
) -> None:
    migrate(galera.url(0, galera_db), tmp_path)
    make_exec_table(galera, galera_db)
    trace, cond = tmp_path / "trace", threading.Condition()
    env = chaos_env(
        foreign_tasks_off,
        CHAOS_LONG="120",
        CHAOS_LONG_DB="0",
        CHAOS_TRACE=str(trace),
        CHAOS_RACE="5:1",
    )
    single = worker(galera, galera_db, tmp_path, env, "single2", [2], cond)
    workers = [single]
    try:
        single.wait_for("chaos long started", timeout=START_TIMEOUT_S)
        workers.append(worker(galera, galera_db, tmp_path, env, "single0", [0], cond))
        workers.append(worker(galera, galera_db, tmp_path, env, "multi2", [2, 0, 1], cond))
        wait_for_total(workers, "worker started", 3, START_TIMEOUT_S)
        multi = workers[2]
        isolated_at = time.time()
        galera.admin("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=1'", index=2)
        # stopped (by the lease keeper or at a checkpoint): its end waits for the database
        single.wait_for(
            "recording the run failed; retrying until it lands", timeout=30, task="long"
        )
        wait_for_total(workers[1:], "chaos long started", 1, 60.0)  # taken over
        multi.wait_for(MOVED, timeout=60)
        multi.wait_for("connected to database host", timeout=30, host=node(galera, 0))
        mark = multi.mark()
        _rejoin(galera, 2)
        single.wait_for("database reachable again", timeout=60)
        multi.wait_for("connected to database host", timeout=60, since=mark, host=node(galera, 2))
    finally:
        codes = stop(workers)
        _whole(galera)
    assert codes == [0, 0, 0]
    no_duplicates(galera, galera_db)
    steps = read_trace(trace)
    by_pid: dict[int, list[float]] = {}
    for run_steps in steps.values():
        for pid, when in run_steps:
            by_pid.setdefault(pid, []).append(when)
    old_last = max(by_pid.pop(single.pid))
    new_first = min(min(times) for times in by_pid.values())
    assert old_last < new_first, "the isolated worker ran on after the takeover began"
    print(
        f"GALERA isolation: last step {old_last - isolated_at:.1f}s after isolating, "
        f"takeover {new_first - isolated_at:.1f}s after"
    )


def node(cluster: Cluster, index: int) -> str:
    return f"127.0.0.1:{cluster.nodes[index].sql_port}"


def _whole(cluster: Cluster) -> None:
    """Whatever happened, leave every node running and synced for the next tests."""
    for index, n in enumerate(cluster.nodes):
        if n.proc is None or n.proc.poll() is not None:
            cluster.restart(index)
        elif n.status("wsrep_local_state_comment") != "Synced":
            _rejoin(cluster, index)


def _rejoin(cluster: Cluster, index: int) -> None:
    """Lift the isolation; a node that does not rejoin by itself is restarted."""
    try:
        cluster.admin("SET GLOBAL wsrep_provider_options = 'gmcast.isolate=0'", index=index)
        cluster.nodes[index].wait_synced(30)
    except Exception:
        cluster.restart(index)
    assert cluster.size() == 3
