"""`python -m bench` keeps working: its smallest scale, cronloop's side, on SQLite.

The figures themselves are not asserted (targets belong to the benchmark, not to timed
tests); what is checked is that every scenario ran, produced its figures, and that the
table and the JSON say so.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.measure import listener_pid, process_cpu_s
from bench.profile import flame_svg, parse, top_entries

ROOT = Path(__file__).resolve().parents[2]


def run_tiny_bench(only: str, json_to: Path | str, *more: str, timeout_s: float = 240) -> Any:
    """`python -m bench` at tiny scale, cronloop on SQLite only: scenarios `only`."""
    argv = [sys.executable, "-m", "bench", "--scale", "tiny", "--db", "sqlite"]
    argv += ["--systems", "cronloop", "--only", only, "--json", str(json_to), *more]
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def test_the_benchmark_runs_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = run_tiny_bench("burst,idle,burst+http", str(out), timeout_s=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAILED" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    runs = {r["scenario"]: r for r in json.loads(out.read_text())["runs"]}
    assert runs["burst"]["figures"]["runs"] == 1000
    assert runs["burst"]["figures"]["runs_per_s"] > 0
    # CPU per run in every scenario (per poll while idle: no runs)
    assert runs["burst"]["figures"]["cpu_ms_per_run"] > 0
    assert runs["idle"]["figures"]["cpu_ms_per_poll"] >= 0
    assert "cpu_ms_per_run" in proc.stdout
    assert runs["idle"]["figures"]["statements_per_poll"] >= 0
    # the pair with the HTTP server on: the same runs, and /metrics was scraped meanwhile
    assert runs["burst+http"]["figures"]["runs"] == 1000
    assert runs["burst+http"]["figures"]["scrapes"] >= 1
    assert "## burst - SQLite" in proc.stdout and "target first_start_ms" in proc.stdout


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


@pytest.mark.skipif(py_spy() is None, reason="py-spy is not installed (the bench extra)")
def test_profile_writes_a_flame_graph_of_the_cronloop_side(tmp_path: Path) -> None:
    proc = run_tiny_bench(
        "burst",
        str(tmp_path / "results.json"),
        "--profile",
        str(tmp_path / "profiles"),
        timeout_s=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    svg = tmp_path / "profiles" / "burst-sqlite-1.svg"
    top = tmp_path / "profiles" / "burst-sqlite-1-top.txt"
    assert svg.read_text().startswith("<svg"), proc.stdout + proc.stderr
    # the service's own code is in the profile, not only the bench's set-up
    assert "cronloop/runtime/" in top.read_text() or "runtime/" in top.read_text()


def test_collapsed_stacks_make_a_top_list_and_a_flame_graph(tmp_path: Path) -> None:
    raw = tmp_path / "x.raw.txt"
    raw.write_text("main (a.py:1);work (a.py:5);leaf (b.py:2) 30\nmain (a.py:1);idle (c.py:9) 10\n")
    stacks = parse(raw)
    assert stacks == Counter(
        {
            ("main (a.py:1)", "work (a.py:5)", "leaf (b.py:2)"): 30,
            ("main (a.py:1)", "idle (c.py:9)"): 10,
        }
    )
    top = top_entries(stacks)
    assert "  75.0 %  leaf (b.py:2)" in top  # own time
    assert " 100.0 %  main (a.py:1)" in top  # total time
    svg = flame_svg(stacks, "t")
    assert svg.count("<rect") == 4 and "leaf (b.py:2) (30 samples, 75.0 %)" in svg


def test_process_cpu_and_the_listener_of_a_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert listener_pid(sock.getsockname()[1]) == os.getpid()
    mine = process_cpu_s(os.getpid())
    assert mine is not None and mine > 0


def test_the_queue_scenarios_run_and_report(tmp_path: Path) -> None:
    """cronloop's side of the queue scenarios (the peers need the `bench` extra and
    their servers): every job started once, figures and the column table printed."""
    out = tmp_path / "results.json"
    proc = run_tiny_bench("queue-drain,queue-steady", str(out), timeout_s=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAILED" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    runs = {r["scenario"]: r for r in json.loads(out.read_text())["runs"]}
    drain, steady = runs["queue-drain"]["figures"], runs["queue-steady"]["figures"]
    assert (drain["jobs"], drain["lost"], drain["duplicates"]) == (2000, 0, 0)
    assert drain["drain_jobs_per_s"] > 0 and drain["cpu_ms_per_job"] > 0
    assert (steady["jobs"], steady["lost"], steady["duplicates"]) == (1000, 0, 0)
    assert 0 < steady["latency_p50_ms"] <= steady["latency_p99_ms"]
    assert "## queue-drain:" in proc.stdout and "| cronloop SQLite" in proc.stdout
