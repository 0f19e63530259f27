"""Three real workers, one per node of a real Galera cluster, started together.

Each worker is the real CLI (`cronloop run`) on its own node's SQL port. What a new user
saw fail before (issue 11): two nodes both migrating a fresh database (exit 70, "table
already exists"), the start-up task-table sync colliding on certification (exit 70,
1213 on INSERT INTO cronloop_task), every certification conflict logged as an outage.
The runs are counted in the chaos tasks' own table (`cronloop_chaos_exec`), written by
each execution, not in cronloop's.
"""

from __future__ import annotations

import itertools
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tests.chaos.chaos_tasks import DDL
from tests.support.cli import migrate
from tests.support.env import CRONLOOP
from tests.support.env import base_env as support_env
from tests.support.galera import Cluster
from tests.support.worker import WorkerProcess, wait_for_total

CHAOS_DIR = Path(__file__).resolve().parents[1] / "chaos"
START_TIMEOUT_S = 90.0


def start_workers(
    cluster: Cluster,
    database: str,
    cwd: Path,
    foreign_off: dict[str, str],
    *args: str,
    chaos: dict[str, str] | None = None,
) -> list[WorkerProcess]:
    """One `cronloop run` per node, all started at once (one shared condition)."""
    env = {**support_env(pythonpath=[CHAOS_DIR]), **foreign_off, **(chaos or {})}
    cond = threading.Condition()
    workers = []
    for i in range(len(cluster.nodes)):
        argv = [
            str(CRONLOOP),
            "run",
            "--task_modules=chaos_tasks",
            "--max_lifetime=0",
            "--poll_interval=0.5",
            "--lease_s=5",
            "--shutdown_grace=3",
            "--history_gc.retention_days=0",
            "--log_level=debug",
            *args,
            f"--database_url={cluster.url(i, database)}",
        ]
        label = f"node{i}"
        workers.append(
            WorkerProcess(
                argv,
                env,
                cwd,
                label=label,
                log_path=cwd / f"{label}.log",
                cond=cond,
                dump_signal=signal.SIGUSR1,  # chaos_tasks prints the asyncio tasks
            )
        )
    return workers


def stop(workers: list[WorkerProcess]) -> list[int]:
    for w in workers:
        w.signal(signal.SIGTERM)
    return [w.wait(30) for w in workers]


def rows(cluster: Cluster, database: str, sql: str) -> list[Any]:
    engine = sa.create_engine(cluster.nodes[0].url(database, "mysql+pymysql"), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return list(conn.exec_driver_sql(sql).all())
    finally:
        engine.dispose()


def make_exec_table(cluster: Cluster, database: str) -> None:
    """The chaos tasks' own table, where each execution writes its row."""
    engine = sa.create_engine(cluster.nodes[0].url(database, "mysql+pymysql"), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(DDL)
    finally:
        engine.dispose()


def no_errors(workers: list[WorkerProcess]) -> None:
    errors = {w.label: w.errors() for w in workers if w.errors()}
    assert not errors, f"error-level lines: {errors}"


def test_fresh_database_auto_migrate_all_start_schema_once(
    galera: Cluster, galera_db: str, tmp_path: Path, foreign_tasks_off: dict[str, str]
) -> None:
    workers = start_workers(
        galera, galera_db, tmp_path, foreign_tasks_off, "--auto_migrate=1", chaos={}
    )
    try:
        wait_for_total(workers, "worker started", 3, START_TIMEOUT_S)
        migrated = [w.label for w in workers if w.find("database schema migrated")]
        assert len(migrated) == 1, f"the schema must be migrated once, by: {migrated}"
        versions = rows(galera, galera_db, "SELECT version_num FROM cronloop_alembic_version")
        assert len(versions) >= 1
        no_errors(workers)
    finally:
        codes = stop(workers)
    assert codes == [0, 0, 0]


def test_after_migrate_all_start_together(
    galera: Cluster, tmp_path: Path, foreign_tasks_off: dict[str, str]
) -> None:
    """The start-up sync of three workers at once: it failed 4 times in 7 before."""
    chaos = {"CHAOS_RACE": "20:3600"}
    for attempt in range(3):
        with galera.database() as database:
            migrate(galera.url(0, database), tmp_path)
            make_exec_table(galera, database)
            workers = start_workers(galera, database, tmp_path, foreign_tasks_off, chaos=chaos)
            try:
                wait_for_total(workers, "worker started", 3, START_TIMEOUT_S)
                wait_for_total(workers, "run finished", 20, 30.0)
                no_errors(workers)
                names = [n for (n,) in rows(galera, database, "SELECT name FROM cronloop_task")]
                races = [n for n in names if n.startswith("race_")]
                assert len(races) == 20, f"attempt {attempt}: {len(races)} race task rows"
            finally:
                codes = stop(workers)
            assert codes == [0, 0, 0], f"attempt {attempt}"


def test_steady_load_across_nodes_no_duplicate_no_gap(
    galera: Cluster, galera_db: str, tmp_path: Path, foreign_tasks_off: dict[str, str]
) -> None:
    migrate(galera.url(0, galera_db), tmp_path)
    make_exec_table(galera, galera_db)
    tasks, period_s, runs_each = 20, 1, 8
    workers = start_workers(
        galera, galera_db, tmp_path, foreign_tasks_off, chaos={"CHAOS_RACE": f"{tasks}:{period_s}"}
    )
    try:
        wait_for_total(workers, "worker started", 3, START_TIMEOUT_S)
        wait_for_total(workers, "run finished", tasks * runs_each, 60.0)
        no_errors(workers)
        conflicts = sum(len(w.find("database conflict; retrying")) for w in workers)
        outages = sum(len(w.find("database unreachable; retrying with backoff")) for w in workers)
    finally:
        codes = stop(workers)
    assert codes == [0, 0, 0]
    assert outages == 0
    executions = rows(
        galera, galera_db, "SELECT task, scheduled_for, run_id FROM cronloop_chaos_exec"
    )
    per_slot = Counter((task, when) for task, when, _ in executions)
    duplicates = {slot: n for slot, n in per_slot.items() if n > 1}
    assert not duplicates, f"duplicate runs: {duplicates}"
    by_task: dict[str, list[Any]] = {}
    for task, when, _ in executions:
        by_task.setdefault(task, []).append(when)
    assert len(by_task) == tasks
    for task, slots in by_task.items():
        slots.sort()
        gaps = [
            (a, b) for a, b in itertools.pairwise(slots) if (b - a).total_seconds() > period_s * 1.5
        ]
        assert not gaps, f"{task}: slots skipped between {gaps}"
    nodes_used = {w.label for w in workers if w.find("run finished")}
    print(f"GALERA steady: runs={len(executions)} conflicts={conflicts} nodes={sorted(nodes_used)}")
