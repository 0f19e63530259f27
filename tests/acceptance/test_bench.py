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
