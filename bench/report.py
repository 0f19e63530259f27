"""Collecting repetitions, the side-by-side table, the targets, the JSON and the PNG."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.scenarios import APSCHEDULER, CRONLOOP, OPS, Scenario

Key = tuple[str, str, str]  # scenario, backend, system


@dataclass
class Measurements:
    environment: dict[str, Any]
    results: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, scenario: str, backend: str, system: str, result: dict[str, Any]) -> None:
        self.results.setdefault((scenario, backend, system), []).append(result)

    def values(self, key: Key, figure: str) -> list[float]:
        return [
            float(r["figures"][figure])
            for r in self.results.get(key, [])
            if figure in r.get("figures", {}) and r["figures"][figure] is not None
        ]

    def median(self, key: Key, figure: str) -> float | None:
        values = self.values(key, figure)
        return statistics.median(values) if values else None

    def medians(self, key: Key) -> dict[str, float]:
        names = {n for r in self.results.get(key, []) for n in r.get("figures", {})}
        return {n: m for n in names if (m := self.median(key, n)) is not None}

    def db_label(self, scenario: str, backend: str) -> str:
        for (s, b, _), results in self.results.items():
            if s == scenario and b == backend and results:
                return str(results[0].get("db", backend))
        return backend

    def as_json(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "runs": [
                {"scenario": s, "backend": b, "system": system, **result}
                for (s, b, system), results in self.results.items()
                for result in results
            ],
        }


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if magnitude >= 0.1 else f"{value:.3f}"


def spread(values: list[float]) -> str:
    """median, and [min-max] when there are several repetitions."""
    if not values:
        return "-"
    middle = fmt(statistics.median(values))
    if len(values) == 1:
        return middle
    return f"{middle} [{fmt(min(values))}-{fmt(max(values))}]"


def ratio(mine: float | None, theirs: float | None) -> str:
    if mine is None or theirs is None or theirs == 0 or mine != mine or theirs != theirs:
        return "-"
    return f"{mine / theirs:.2f}x"


def print_report(m: Measurements, scenarios: Sequence[Scenario]) -> None:
    env = m.environment
    print(
        f"\ncronloop vs APScheduler {env.get('apscheduler') or '(not run)'} - {env['date']}; "
        f"Python {env['python']}; {env.get('cpu')}; {env['machine']}; scale {env['scale']}, "
        f"{env['repeat']} repetition(s); median [min-max]"
    )
    for scenario in scenarios:
        if scenario.columns:
            _print_columns(m, scenario)
            continue
        backends = sorted({b for (s, b, _) in m.results if s == scenario.name})
        for backend in backends:
            _print_scenario(m, scenario, backend)


def _print_columns(m: Measurements, scenario: Scenario) -> None:
    """One table, a column per (system, store) that ran; targets on cronloop's columns,
    `vs_peers` ones against every column of another system."""
    keys = [
        (scenario.name, b, s) for s, b in scenario.columns if (scenario.name, b, s) in m.results
    ]
    if not keys:
        return
    print(f"\n## {scenario.name}: {scenario.what}")
    heads = [f"{k[2]} {m.db_label(k[0], k[1])}" for k in keys]
    rows = [("figure", *heads)]
    for figure in scenario.figures:
        cells = [spread(m.values(k, figure)) for k in keys]
        if any(c != "-" for c in cells):
            rows.append((figure, *cells))
    _table(rows)
    for key in keys:
        for result in m.results[key]:
            if "error" in result:
                print(f"  {key[2]} ({key[1]}) FAILED: {result['error'].splitlines()[-1][:300]}")
            for note in result.get("notes", []):
                print(f"  {key[2]} ({key[1]}): {note}")
    peers = [k for k in keys if k[2] != CRONLOOP]
    for target in scenario.targets:
        for key in keys:
            if key[2] != CRONLOOP or key[1] not in target.backends:
                continue
            mine = m.medians(key)
            verdicts = [target.met(mine, None)] if not target.vs_peers else []
            for peer in peers if target.vs_peers else []:
                theirs = m.median(peer, target.figure)
                ours = mine.get(target.figure)
                verdicts.append(
                    None if theirs is None or ours is None else OPS[target.op](ours, theirs)
                )
            verdict = None if None in verdicts or not verdicts else all(verdicts)
            word = {True: "MET", False: "MISSED", None: "not measured"}[verdict]
            print(f"  target {target.figure} ({key[1]}) {target.describe()}: {word}")


def _print_scenario(m: Measurements, scenario: Scenario, backend: str) -> None:
    mine_key = (scenario.name, backend, CRONLOOP)
    theirs_key = (scenario.name, backend, APSCHEDULER)
    print(f"\n## {scenario.name} - {m.db_label(scenario.name, backend)}: {scenario.what}")
    rows = [("figure", "cronloop", "APScheduler", "cronloop / APS")]
    for figure in scenario.figures:
        mine, theirs = m.values(mine_key, figure), m.values(theirs_key, figure)
        if not mine and not theirs:
            continue
        rows.append(
            (
                figure,
                spread(mine),
                spread(theirs),
                ratio(m.median(mine_key, figure), m.median(theirs_key, figure)),
            )
        )
    _table(rows)
    for key in (mine_key, theirs_key):
        for result in m.results.get(key, []):
            if "error" in result:
                print(f"  {key[2]} FAILED: {result['error'].splitlines()[-1][:300]}")
            for note in result.get("notes", []):
                print(f"  {key[2]}: {note}")
    mine_figures = m.medians(mine_key)
    theirs_figures = m.medians(theirs_key)
    for target in scenario.targets:
        if backend not in target.backends:
            continue
        verdict = target.met(mine_figures, theirs_figures.get(target.figure))
        word = {True: "MET", False: "MISSED", None: "not measured"}[verdict]
        print(f"  target {target.figure} {target.describe()}: {word}")


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def draw_lateness(m: Measurements, path: Path) -> None:
    """Histograms of due-to-start lateness (log scale), one panel per database."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("drawing needs matplotlib: pip install -e '.[bench,plot]'") from None
    panels = sorted(
        {
            (s, b)
            for (s, b, _), rs in m.results.items()
            if any(r.get("samples", {}).get("lateness_ms") for r in rs)
        }
    )
    if not panels:
        print("no lateness samples to draw")
        return
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), squeeze=False)
    for ax, (scenario, backend) in zip(axes[:, 0], panels, strict=True):
        for system, colour in ((CRONLOOP, "tab:blue"), (APSCHEDULER, "tab:orange")):
            samples = [
                max(v, 0.01)
                for r in m.results.get((scenario, backend, system), [])
                for v in r.get("samples", {}).get("lateness_ms", [])
            ]
            if not samples:
                continue
            bins = _log_bins(samples)
            ax.hist(
                samples, bins=bins, alpha=0.6, label=f"{system} ({len(samples)} runs)", color=colour
            )
        ax.set_xscale("log")
        ax.set_xlabel("due-to-start lateness, ms (log scale)")
        ax.set_ylabel("runs")
        ax.set_title(f"{scenario} - {m.db_label(scenario, backend)}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _log_bins(samples: list[float], per_decade: int = 20) -> list[float]:
    import math

    low = math.floor(math.log10(min(samples)))
    high = math.ceil(math.log10(max(samples) * 1.001))
    steps = max(1, (high - low) * per_decade)
    return [10 ** (low + (high - low) * i / steps) for i in range(steps + 1)]
