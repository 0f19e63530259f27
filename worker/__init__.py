"""cronloop: runs an application's background tasks from a database table.

The public API for task authors::

    from worker import task, TaskContext

    @task(every=3600, timeout=60)
    async def draft_attachment_gc(ctx: TaskContext) -> str | None:
        ...
"""

from worker.context import StopReason, StopRun, TaskContext
from worker.outcome import Outcome, TaskStatus
from worker.registry import TaskSpec, task

__all__ = ["Outcome", "StopReason", "StopRun", "TaskContext", "TaskSpec", "TaskStatus", "task"]
