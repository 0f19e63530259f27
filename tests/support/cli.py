"""One-shot `cronloop` commands: a finished command's result, `migrate`, and the
settings that disable the standard tasks.

The standard tasks (email, backup, cleanup...) come through entry points and would run
beside a test's own tasks; `standard_tasks_off` asks the installed CLI which they are,
so a `run --once` runs only what a test chose and a benchmark's load is only its own.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.env import CRONLOOP, base_env
from tests.support.worker import Event, parse_json

COMMAND_TIMEOUT_S = 60.0


@dataclass
class Result:
    """A finished command: exit code, stdout, stderr."""

    rc: int
    out: str
    err: str

    @property
    def events(self) -> list[Event]:
        return [e for e in map(parse_json, self.err.splitlines()) if e is not None]

    def __str__(self) -> str:
        return f"exit {self.rc}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


def run_cronloop(
    args: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    timeout: float = COMMAND_TIMEOUT_S,
) -> Result:
    """`cronloop <args>` to its end (bounded by `timeout`)."""
    proc = subprocess.run(
        [str(CRONLOOP), *args],
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def migrate(url: str, cwd: Path, env: Mapping[str, str] | None = None) -> Result:
    """`cronloop migrate --database_url=<url>`, which must succeed."""
    result = run_cronloop(["migrate", f"--database_url={url}"], env or base_env(), cwd, 120.0)
    if result.rc != 0:
        raise AssertionError(f"cronloop migrate failed: {result}")
    return result


def enabled_variable(task_name: str) -> str:
    """The environment variable of a task's `enabled` option."""
    return f"CRONLOOP_{re.sub(r'[^A-Za-z0-9]', '_', task_name).upper()}__ENABLED"


def standard_tasks_off(cwd: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`CRONLOOP_<TASK>__ENABLED=0` for every task installed by entry points."""
    result = run_cronloop(["tasks", "--task_modules="], env or base_env(), cwd)
    if result.rc != 0:
        raise AssertionError(f"cronloop tasks failed: {result}")
    names = [line.split("|")[0].strip() for line in result.out.splitlines()[2:] if "|" in line]
    return {enabled_variable(n): "0" for n in names if n}
