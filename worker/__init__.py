"""cronloop: runs an application's background tasks from a database table.

The public API for task authors::

    from cronloop import task, TaskContext

    @task(every=3600, timeout=60)
    async def draft_attachment_gc(ctx: TaskContext) -> str | None:
        ...
"""

from cronloop.definitions.context import StopReason, StopRun, TaskContext
from cronloop.definitions.registry import TaskSpec, task
from cronloop.domain.outcome import Outcome, TaskStatus

__all__ = ["Outcome", "StopReason", "StopRun", "TaskContext", "TaskSpec", "TaskStatus", "task"]
