"""The environment of every `cronloop` process the tests and the bench start.

Clean of whatever the machine running them has (its own `CRONLOOP_*` settings, a
systemd unit's `NOTIFY_SOCKET`, `PYTHONPATH`...), no params file, JSON logs: a worker's
behaviour then depends only on what a test passes it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

# The console script of the interpreter running the tests (the venv's `cronloop`).
CRONLOOP = Path(sys.executable).parent / "cronloop"

# What the service reads from systemd or the shell and that must not leak into a test.
SCRUBBED = (
    "STATE_DIRECTORY",
    "CREDENTIALS_DIRECTORY",
    "NOTIFY_SOCKET",
    "JOURNAL_STREAM",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "INVOCATION_ID",
    "PYTHONPATH",
)
# Prefixes of variables that configure cronloop or the harnesses themselves.
SCRUBBED_PREFIXES = ("CRONLOOP_", "CHAOS_")


def base_env(
    *,
    pythonpath: Iterable[Path | str] = (),
    state_dir: Path | None = None,
    startup_db_wait_s: float = 10.0,
) -> dict[str, str]:
    """The scrubbed environment: `pythonpath` holds the task modules a worker imports,
    `state_dir` is its `STATE_DIRECTORY` (where the embedded SQLite file lands)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(SCRUBBED_PREFIXES) and k not in SCRUBBED
    }
    env.update(
        CRONLOOP_PARAM_FILE="",
        CRONLOOP_ALLOW_ROOT="1",  # the tests run as whoever runs them, root in CI
        CRONLOOP_LOG_FORMAT="json",
        CRONLOOP_STARTUP_DB_WAIT_S=f"{startup_db_wait_s:g}",
        PYTHONUNBUFFERED="1",
    )
    paths = [str(p) for p in pythonpath]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    if state_dir is not None:
        env["STATE_DIRECTORY"] = str(state_dir)
    return env


def need_console_script() -> Path:
    """The `cronloop` console script, or a clear error naming how to get it."""
    if not os.access(CRONLOOP, os.X_OK):
        raise RuntimeError(
            f"the console script {CRONLOOP} is missing: `pip install -e .` in this venv"
        )
    return CRONLOOP
