"""cronloop: runs an application's background tasks from a database table.

The public API for task authors::

    from cronloop import task, TaskContext

    @task(every=3600, timeout=60)
    async def draft_attachment_gc(ctx: TaskContext) -> str | None:
        ...

and for plugin authors (`cronloop.definitions.plugin`): `Plugin`, `Command`,
`CommandContext`, `CommandError`, the settings a task or command reads (`Settings`,
`Secret`, `state_directory`), time zones (`resolve_timezone`, `ScheduleError`) and the
exit codes (`cronloop.exitcodes`), and `GaugeSample` for the gauges a package adds to
`/metrics` (entry-point group `cronloop.gauges`). Plugin tables use `cronloop.sql`.
Everything else under `cronloop.*` is internal and may change.

`__version__` is the one source of the version: pyproject reads it (setuptools attr),
and `cronloop --version`, `check-config`, the READY status line, the first log line
of `cronloop run` and `cronloop_build_info` show it.

Jobs: ``@job(name=..., max_retries=...)`` declares a handler, ``await enqueue(session,
"name", {"arg": 1})`` queues one (see the README, "Queueing jobs").
"""

__version__ = "0.1.0"

from cronloop import exitcodes
from cronloop.config.paths import state_directory
from cronloop.config.settings import Settings
from cronloop.config.values import Secret
from cronloop.definitions.context import StopReason, StopRun, TaskContext
from cronloop.definitions.jobs import PermanentJobError, job
from cronloop.definitions.plugin import Command, CommandContext, CommandError, Plugin
from cronloop.definitions.registry import TaskSpec, task
from cronloop.domain.outcome import Outcome, TaskStatus
from cronloop.domain.schedule import ScheduleError, resolve_timezone
from cronloop.store.sql.enqueue import enqueue
from cronloop.web.gauges import GaugeSample

__all__ = [
    "Command",
    "CommandContext",
    "CommandError",
    "GaugeSample",
    "Outcome",
    "PermanentJobError",
    "Plugin",
    "ScheduleError",
    "Secret",
    "Settings",
    "StopReason",
    "StopRun",
    "TaskContext",
    "TaskSpec",
    "TaskStatus",
    "__version__",
    "enqueue",
    "exitcodes",
    "job",
    "resolve_timezone",
    "state_directory",
    "task",
]
