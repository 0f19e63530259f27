"""`python -m bench`: cronloop and APScheduler 3.11, same machine, same database, same
workload; a side-by-side table with ratios and the targets cronloop must reach.

    python -m bench                                   # quick scale, SQLite and MariaDB
    python -m bench --scale full --repeat 3 --png lateness.png
    python -m bench --only lateness,burst --db mariadb --systems cronloop

Every (scenario, database, system, repetition) runs in a child process of its own on a
fresh database (a SQLite file, or a scratch MariaDB database created and dropped), so
figures are never shared between the two schedulers. Results go to `--json`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.databases import DEFAULT_MARIADB, scratch_database
from bench.peer_databases import DEFAULT_POSTGRES, DEFAULT_REDIS
from bench.profile import ENV as PROFILE_ENV
from bench.report import Measurements, draw_lateness, print_report
from bench.scenarios import CRONLOOP, SCENARIOS, SYSTEMS, Scenario, by_name

ROOT = Path(__file__).resolve().parent.parent  # the checkout: children import bench and tests


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--db",
        default="sqlite,mariadb",
        help="back ends, comma-separated: sqlite, mariadb (default: both)",
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("CRONLOOP_BENCH_MARIADB", DEFAULT_MARIADB),
        help=f"MariaDB server for scratch databases (default {DEFAULT_MARIADB})",
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("CRONLOOP_BENCH_POSTGRES", DEFAULT_POSTGRES),
        help=f"PostgreSQL server for procrastinate's scratch databases ({DEFAULT_POSTGRES})",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("CRONLOOP_BENCH_REDIS", DEFAULT_REDIS),
        help=f"Redis database for arq, scratch key prefix (default {DEFAULT_REDIS})",
    )
    parser.add_argument(
        "--scale",
        choices=("tiny", "quick", "full"),
        default="quick",
        help="workload size: quick (default, a few minutes), full (the "
        "issue's figures: 60 s windows, 100,000 runs), tiny (smoke test)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="repetitions (min/median/max)")
    parser.add_argument("--only", default="", help="scenarios, comma-separated (default all)")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"a subset of {', '.join(SYSTEMS)} (default all)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("bench-results.json"),
        help="where to write the results (default bench-results.json)",
    )
    parser.add_argument(
        "--png",
        type=Path,
        default=None,
        help="draw the lateness distributions (needs the `plot` extra)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy profile of the cronloop side of each run: DIR/<scenario>-<db>-<n>.svg "
        "(flame graph) and -top.txt (top entries); figures of a profiled run are not the "
        "table's (needs py-spy, and root or ptrace rights)",
    )
    return parser.parse_args(argv)


def selected(opts: argparse.Namespace) -> list[Scenario]:
    names = [n for n in opts.only.split(",") if n]
    known = by_name()
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names] if names else list(SCENARIOS)


def run_child(
    module: str,
    scenario: Scenario,
    backend: str,
    opts: argparse.Namespace,
    params: dict[str, Any],
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """One scenario, one system, one fresh database, in a child process."""
    with tempfile.TemporaryDirectory(prefix=f"bench-{scenario.name}-") as tmp:
        workdir = Path(tmp)
        peers = {"postgresql": opts.postgres, "redis": opts.redis}
        with scratch_database(backend, workdir, opts.server, peers) as db:
            out = workdir / "result.json"
            cmd = [
                sys.executable,
                "-m",
                module,
                scenario.name,
                "--url",
                db.url,
                "--async-url",
                db.async_url,
                "--sync-url",
                db.sync_url,
                "--params",
                json.dumps(params),
                "--out",
                str(out),
                "--workdir",
                str(workdir),
            ]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(workdir)])}
            if profile_to is not None:
                env[PROFILE_ENV] = str(profile_to.resolve())
            started = time.monotonic()
            proc = subprocess.run(
                cmd,
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=scenario.timeout_s,
                check=False,
            )
            wall_s = time.monotonic() - started
            if proc.returncode != 0 or not out.exists():
                tail = (proc.stdout + proc.stderr)[-2500:]
                return {
                    "error": f"exit {proc.returncode}: {tail}",
                    "wall_s": wall_s,
                    "db": db.label,
                }
            result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
            result.update(wall_s=wall_s, db=db.label)
            return result


def environment(opts: argparse.Namespace) -> dict[str, Any]:
    import sqlite3

    import sqlalchemy

    info: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.node()}",
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": sqlalchemy.__version__,
        "scale": opts.scale,
        "repeat": opts.repeat,
        "load_average": os.getloadavg(),
    }
    try:
        import apscheduler

        info["apscheduler"] = apscheduler.__version__  # type: ignore[attr-defined]
    except ImportError:
        info["apscheduler"] = None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            info["cpu"] = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None
            )
    except OSError:
        info["cpu"] = None
    return info


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse(argv)
    backends = [b for b in opts.db.split(",") if b]
    systems = [s for s in opts.systems.split(",") if s]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        sys.exit(f"unknown system(s) {', '.join(bad)}; known: {', '.join(SYSTEMS)}")
    if "APScheduler" in systems:
        try:
            import apscheduler  # noqa: F401
        except ImportError:
            sys.exit("APScheduler is not installed: pip install -e '.[bench]'")
    for peer in ("procrastinate", "arq"):
        wanted = any(peer in s.modules for s in selected(opts))
        if peer in systems and wanted and importlib.util.find_spec(peer) is None:
            sys.exit(
                f"{peer} is not installed: pip install -e '.[bench]' (or leave it out of --systems)"
            )
    measurements = Measurements(environment(opts))
    for scenario in selected(opts):
        for backend, system in scenario.runs(backends, systems):
            for rep in range(opts.repeat):
                label = f"{scenario.name} / {backend} / {system} #{rep + 1}"
                print(f"running {label} ...", file=sys.stderr, flush=True)
                profile_to = (
                    opts.profile / f"{scenario.name}-{backend}-{rep + 1}"
                    if opts.profile is not None and system == CRONLOOP
                    else None
                )
                result = run_child(
                    scenario.modules[system],
                    scenario,
                    backend,
                    opts,
                    scenario.params[opts.scale],
                    profile_to,
                )
                if "error" in result:
                    print(f"  FAILED: {result['error']}", file=sys.stderr)
                else:
                    print(f"  done in {result['wall_s']:.0f} s", file=sys.stderr)
                measurements.add(scenario.name, backend, system, result)
    opts.json.write_text(json.dumps(measurements.as_json(), indent=1), encoding="utf-8")
    print_report(measurements, selected(opts))
    print(f"\nresults written to {opts.json}")
    if opts.profile is not None:
        print(f"profiles of the cronloop side written to {opts.profile}/ (.svg, -top.txt)")
    if opts.png is not None:
        draw_lateness(measurements, opts.png)
        print(f"lateness distribution drawn in {opts.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
