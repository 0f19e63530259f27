"""`python -m bench` keeps working: its smallest scale, cronloop's side, on SQLite.

The figures themselves are not asserted (targets belong to the benchmark, not to timed
tests); what is checked is that every scenario ran, produced its figures, and that the
table and the JSON say so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--scale",
            "tiny",
            "--db",
            "sqlite",
            "--systems",
            "cronloop",
            "--only",
            "burst,idle,burst+http",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAILED" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    runs = {r["scenario"]: r for r in json.loads(out.read_text())["runs"]}
    assert runs["burst"]["figures"]["runs"] == 1000
    assert runs["burst"]["figures"]["runs_per_s"] > 0
    assert runs["idle"]["figures"]["statements_per_poll"] >= 0
    # the pair with the HTTP server on: the same runs, and /metrics was scraped meanwhile
    assert runs["burst+http"]["figures"]["runs"] == 1000
    assert runs["burst+http"]["figures"]["scrapes"] >= 1
    assert "## burst - SQLite" in proc.stdout and "target first_start_ms" in proc.stdout


def test_the_queue_scenarios_run_and_report(tmp_path: Path) -> None:
    """cronloop's side of the queue scenarios (the peers need the `bench` extra and
    their servers): every job started once, figures and the column table printed."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--scale",
            "tiny",
            "--db",
            "sqlite",
            "--systems",
            "cronloop",
            "--only",
            "queue-drain,queue-steady",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAILED" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    runs = {r["scenario"]: r for r in json.loads(out.read_text())["runs"]}
    drain, steady = runs["queue-drain"]["figures"], runs["queue-steady"]["figures"]
    assert (drain["jobs"], drain["lost"], drain["duplicates"]) == (2000, 0, 0)
    assert drain["drain_jobs_per_s"] > 0 and drain["cpu_ms_per_job"] > 0
    assert (steady["jobs"], steady["lost"], steady["duplicates"]) == (1000, 0, 0)
    assert 0 < steady["latency_p50_ms"] <= steady["latency_p99_ms"]
    assert "## queue-drain:" in proc.stdout and "| cronloop SQLite" in proc.stdout
