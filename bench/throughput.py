"""Executions per second of the real service when many tasks are due at once.

Registers N trivial tasks (default 10,000, `every` 1 h) that are all due now, then times
`cronloop run --once --max_concurrency=C` (a subprocess, JSON log) for each C. Reported:
runs recorded as `success` in `cronloop_run`, and executions/second over the worker's
loop (from its "worker started" to its "worker stopped" log line) and over the whole
command (start-up, import of the task module and the resync included).

    python bench/throughput.py --db sqlite --tasks 10000 --concurrency 50,200
    python bench/throughput.py --db mysql://root@127.0.0.1:3306 --tasks 10000

Each concurrency gets a fresh database (see bench/latency.py for `--db`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import (  # after the path set-up, like every bench script
    cli_env,
    history,
    log_times,
    print_table,
    register,
    run_service,
    scratch_database,
    write_task_module,
)


def measure(spec: str, count: int, concurrency: int, extra: Sequence[str],
            workdir: Path, module: str, env: dict[str, str]) -> list[object]:
    with scratch_database(spec, workdir) as db:
        register(workdir, db, module)  # every task due now
        log_path = workdir / f"worker-{concurrency}.log"
        args = ["--once", f"--task_modules={module}", f"--database_url={db.url}",
                f"--max_concurrency={concurrency}", *extra]
        run = run_service(args, env, log_path, timeout=1800)
        if run.rc != 0:
            sys.exit(f"cronloop exited {run.rc}; log tail: {log_path.read_text()[-3000:]}")
        started = log_times(log_path, "worker started")[0]
        stopped = log_times(log_path, "worker stopped")[-1]
        rows = history(db)
    done = sum(1 for r in rows if r.outcome == "success")
    loop_s = (stopped - started).total_seconds()
    return [db.label, count, concurrency, done, len(rows) - done, f"{loop_s:.1f}",
            f"{run.wall_s:.1f}", f"{done / loop_s:.0f}", f"{done / run.wall_s:.0f}",
            f"{100 * run.cpu_s / run.wall_s:.0f}%"]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", action="append", required=True,
                        help="`sqlite` or a MySQL/MariaDB server URL; repeat to compare")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--concurrency", default="50,200",
                        help="comma-separated max_concurrency values")
    parser.add_argument("service_args", nargs="*",
                        help="settings for `cronloop run`, after --: -- --log_level=warning")
    opts = parser.parse_args(argv)
    levels = [int(c) for c in opts.concurrency.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="cronloop-throughput-") as tmp:
        workdir = Path(tmp)
        module = f"bench_tasks_{os.getpid()}"
        write_task_module(workdir, module, opts.tasks, 3600.0)
        env = cli_env(workdir)
        for spec in opts.db:
            for concurrency in levels:
                rows.append(measure(spec, opts.tasks, concurrency, opts.service_args,
                                    workdir, module, env))
    print(f"throughput of `cronloop run --once` "
          f"{' '.join(opts.service_args) or '(default settings)'}, all tasks due at once")
    print_table(["database", "tasks", "concurrency", "runs", "other", "loop s", "wall s",
                 "runs/s loop", "runs/s wall", "worker cpu"], rows)


if __name__ == "__main__":
    main()
