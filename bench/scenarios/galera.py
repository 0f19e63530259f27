"""The `galera` scenario: the `workers` steady load on a 3-node Galera cluster, one worker
per node, against the same load and worker count on the single MariaDB server.

Both runs are `workers`' part A (`steady_load`: tasks every `every_s`, each run writes a
ledger row; duplicates and missed slots from the ledger, lateness from the history);
the cluster is booted here from Debian's packages (`tests.support.galera`, which needs
root), on the same machine. Conflicts are the certification failures (and deadlocks)
the workers retried, counted from their debug log ("database conflict; retrying"):
both runs log at debug, so the logging costs the same on both sides.

    python -m bench.scenarios.galera galera --url U --async-url AU --sync-url SU \\
        --params '{"tasks": 100}' --out result.json --workdir /tmp/x
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url

from bench.child import ChildArgs, ChildResult
from bench.drivers.cronloop_fleet import fleet_main, prepared
from bench.scenarios.workers import steady_load
from tests.support.galera import Cluster, galera_cluster, missing

CONFLICT_LINE = '"database conflict; retrying"'
OUTAGE_LINE = '"database unreachable; retrying with backoff"'


def _count(workdir: Path, needle: str) -> int:
    return sum(
        log.read_text(encoding="utf-8", errors="replace").count(needle)
        for log in workdir.glob("w*.log")
    )


def _run(args: ChildArgs, name: str, urls: tuple[str, ...], p: dict[str, float]) -> ChildResult:
    tasks, every = int(p["tasks"]), float(p["every_s"])
    with prepared(args, name, steady=tasks, every=every) as setup:
        env = {**setup.env, "CRONLOOP_LOG_LEVEL": "debug"}  # conflicts are logged at debug
        setup = dataclasses.replace(setup, worker_urls=urls, env=env)
        result = steady_load(setup, int(p["workers"]), tasks, every, float(p["duration_s"]))
        runs = result.figures.get("runs", 0)
        conflicts = _count(setup.workdir, CONFLICT_LINE)
        result.figures["conflicts"] = conflicts
        result.figures["conflicts_per_run"] = round(conflicts / runs, 3) if runs else 0.0
        result.figures["outages"] = _count(setup.workdir, OUTAGE_LINE)
        result.figures["runs_per_s"] = round(runs / float(p["duration_s"]), 1)
    return result


def _cluster_args(args: ChildArgs, cluster: Cluster, database: str) -> ChildArgs:
    def on(driver: str) -> str:
        return cluster.nodes[0].url(database, driver)

    return dataclasses.replace(
        args, url=on("mysql"), async_url=on("mysql+aiomysql"), sync_url=on("mysql+pymysql")
    )


def galera(args: ChildArgs) -> ChildResult:
    p = {
        "workers": 3.0,
        "tasks": 100.0,
        "every_s": 1.0,
        "duration_s": 20.0,
        **{k: float(v) for k, v in args.params.items()},
    }
    lacks = missing()
    if lacks:
        return ChildResult(notes=[f"no Galera cluster here: missing {', '.join(lacks)}"])
    single_url = make_url(args.url)
    single = _run(args, "single", (str(single_url),), p)
    with galera_cluster(3) as cluster, cluster.database("cronloop_bench_g") as database:
        cargs = _cluster_args(args, cluster, database)
        urls = tuple(cluster.nodes[i].url(database, "mysql") for i in range(3))
        on_cluster = _run(cargs, "cluster", urls, p)
    result = ChildResult()
    for label, part in (("single", single), ("cluster", on_cluster)):
        for key in (
            "runs",
            "runs_per_s",
            "duplicates",
            "missed",
            "conflicts",
            "conflicts_per_run",
            "outages",
            "lateness_p50_ms",
            "lateness_p99_ms",
            "worker_cpu_pct",
            "workers_crashed",
        ):
            if key in part.figures:
                result.figures[f"{key}_{label}"] = part.figures[key]
        result.notes += [f"{label}: {note}" for note in part.notes]
    result.figures["throughput_ratio"] = (
        round(result.figures["runs_per_s_cluster"] / result.figures["runs_per_s_single"], 2)
        if result.figures.get("runs_per_s_single")
        else 0.0
    )
    result.notes.append(
        f"{int(p['workers'])} workers (one per node on the cluster), {int(p['tasks'])} tasks "
        f"every {p['every_s']:g}s for {p['duration_s']:g}s, each side; workers log at debug "
        "(CRONLOOP_LOG_LEVEL=debug) to count conflicts"
    )
    return result


SCENARIOS: dict[str, Callable[[ChildArgs], ChildResult]] = {"galera": galera}

if __name__ == "__main__":
    fleet_main(SCENARIOS)
