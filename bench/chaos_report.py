"""Summarise the chaos tests' measurements as one table.

The chaos tests (`tests/chaos/`) append one JSON object per test to the file named by
`CHAOS_REPORT_FILE`; this script prints them, so a CI run's takeover time, duplicate and
lost counts can be read (and compared between runs) without digging through test output:

    CHAOS_REPORT_FILE=chaos.jsonl pytest -m chaos tests/chaos
    python bench/chaos_report.py chaos.jsonl

Several runs in one file are grouped by test; numeric figures show min / max over runs.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

KEY_FIGURES = (
    "takeover_s",
    "duplicates",
    "lost",
    "overlaps",
    "rerun_after_crash",
    "executions",
    "missed",
    "zombie_steps_after_sigcont",
    "resumed_after_s",
    "standby_cpu",
    "steady_max_slip_s",
    "detected_after_s",
    "errors_logged",
)


def load(path: Path) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            runs[entry.pop("test")].append(entry)
    return runs


def figure(values: list[Any]) -> str:
    """One cell: the value, or min..max when runs disagree."""
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        low, high = min(values), max(values)
        return f"{low}" if low == high else f"{low}..{high}"
    distinct = {json.dumps(v, sort_keys=True) for v in values}
    return " | ".join(sorted(distinct))


def render(runs: dict[str, list[dict[str, Any]]]) -> str:
    lines = []
    for test, entries in sorted(runs.items()):
        keys = [k for k in KEY_FIGURES if any(k in e for e in entries)]
        keys += sorted({k for e in entries for k in e} - set(keys))
        lines.append(f"{test}  ({len(entries)} run{'s' if len(entries) > 1 else ''})")
        for key in keys:
            values = [e[key] for e in entries if key in e]
            lines.append(f"    {key:<28} {figure(values)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="the CHAOS_REPORT_FILE of a test run")
    args = parser.parse_args()
    print(render(load(args.report)))


if __name__ == "__main__":
    main()
