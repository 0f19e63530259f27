"""The child-process protocol: every (scenario, database, system, repetition) runs in a
child process of its own (`python -m bench.scenarios.<module> <scenario> --url ...
--params JSON --out FILE --workdir DIR`), so memory and CPU figures are that scheduler's
alone; the child writes one JSON document:
`{"figures": {name: number}, "samples": {name: [numbers]}, "notes": [text]}`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ChildResult:
    figures: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def write(self, path: Path) -> None:
        path.write_text(
            json.dumps({"figures": self.figures, "samples": self.samples, "notes": self.notes}),
            encoding="utf-8",
        )


@dataclass(frozen=True)
class ChildArgs:
    scenario: str
    url: str  # plain URL: sqlite:///file or mysql://user@host:port/db
    async_url: str
    sync_url: str
    params: dict[str, Any]
    out: Path
    workdir: Path


def child_main(
    scenarios: Mapping[str, Callable[[ChildArgs], ChildResult]], argv: Sequence[str] | None = None
) -> None:
    """The entry point of a side's child process."""
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(scenarios))
    parser.add_argument("--url", required=True)
    parser.add_argument("--async-url", required=True)
    parser.add_argument("--sync-url", required=True)
    parser.add_argument("--params", default="{}")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    o = parser.parse_args(argv)
    args = ChildArgs(
        o.scenario, o.url, o.async_url, o.sync_url, json.loads(o.params), o.out, o.workdir
    )
    sys.path.insert(0, str(o.workdir))  # generated task modules live there
    paths = [str(o.workdir), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    result = scenarios[o.scenario](args)
    result.write(o.out)
    sys.exit(0)
