"""cronloop: runs an application's background tasks from a database table.

The public API for task authors::

    from cronloop import task, TaskContext

    @task(every=3600, timeout=60)
    async def draft_attachment_gc(ctx: TaskContext) -> str | None:
        ...

and for plugin authors (`cronloop.definitions.plugin`): `Plugin`, `Command`,
`CommandContext`, `CommandError`, the settings a task or command reads (`Settings`,
`Secret`, `state_directory`), time zones (`resolve_timezone`, `ScheduleError`) and the
exit codes (`cronloop.exitcodes`). Plugin tables use `cronloop.sql`. Everything else under
`cronloop.*` is internal and may change.

Jobs: ``@job(name=..., max_retries=...)`` declares a handler, ``await enqueue(session,
"name", {"arg": 1})`` queues one (see the README, "Queueing jobs").
"""

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

__all__ = [
    "Command",
    "CommandContext",
    "CommandError",
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
    "enqueue",
    "exitcodes",
    "job",
    "resolve_timezone",
    "state_directory",
    "task",
]
