"""The `@task` decorator and `TaskDefinition`: what the code declares, checked at once.

Definitions are checked when the decorator runs, so a malformed task is an error at
import (start-up) that names the task, never a crash at its first run. The decorator
keeps a definition in two places only: on the function (``__cronloop_task__``, for
``cronloop.testing``) and in the list ``__cronloop_tasks__`` of the module that defines
the function, so tasks made in a loop or inside a function count too. There is no global
list: which tasks a worker runs is decided by discovery (`cronloop.definitions.discovery`),
which reads those lists from the modules it imports; a module imported afresh starts
with an empty one. This module never knows about settings, the database or the loop.
"""

from __future__ import annotations

import inspect
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import ModuleType
from typing import Any, TypeVar, overload
from zoneinfo import ZoneInfo

from cronloop.domain.schedule import ScheduleError, parse_schedule

__all__ = [
    "ATTRIBUTE",
    "COMMON_OPTIONS",
    "MODULE_ATTRIBUTE",
    "SCHEDULE_OPTIONS",
    "TaskDefinition",
    "TaskDefinitionError",
    "defined_in",
    "name_key",
    "name_problem",
    "task",
]

#: The function attribute where the decorator leaves the checked definition.
ATTRIBUTE = "__cronloop_task__"
#: The module attribute listing the definitions made by that module's code, in order.
MODULE_ATTRIBUTE = "__cronloop_tasks__"
SCHEDULE_OPTIONS = frozenset({"every", "at", "time", "days", "week_days", "cron"})
COMMON_OPTIONS = SCHEDULE_OPTIONS | {"enabled", "timeout"}

#: A task's name: ASCII, so the params file (``<task>.<key>``, keys lower-cased, ``-`` read
#: as ``_``), ``CRONLOOP_<TASK>__<KEY>``, the command line and both databases accept it; no
#: dot, since a dot ends the task part of a per-task setting.
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
#: The width of the task-name columns (``cronloop_task.name``, ``cronloop_run.task_name``).
NAME_MAX_CHARS = 190

F = TypeVar("F", bound=Callable[..., Any])


class TaskDefinitionError(ValueError):
    """A task's own definition is wrong; the message starts with the task's name."""


@dataclass(frozen=True)
class TaskDefinition:
    """What the decorator was given, checked but not yet combined with settings."""

    name: str
    func: Callable[..., Any]
    every: float | timedelta | str | None
    at: str | None
    days: str | None
    cron: str | None
    timeout_s: float | None
    blocking: bool
    enabled: bool
    options: Mapping[str, Any]
    description: str

    @property
    def module(self) -> str:
        return str(self.func.__module__)


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a task's name, or None if it can."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        return (
            "name must be an ASCII letter followed by letters, digits, '_' or '-' (it is "
            "used as a settings prefix, on the command line and in the database)"
        )
    if len(name) > NAME_MAX_CHARS:
        return f"name is {len(name)} characters long; at most {NAME_MAX_CHARS} fit the database"
    return None


def name_key(name: str) -> str:
    """The spelling two task names must not share: settings read names case-insensitively
    with ``-`` as ``_``, and MySQL/MariaDB compare them case-insensitively."""
    return name.lower().replace("-", "_")


def defined_in(module: ModuleType) -> list[TaskDefinition]:
    """The definitions the code of ``module`` made (its ``__cronloop_tasks__``), in order."""
    found = vars(module).get(MODULE_ATTRIBUTE, ())
    return [d for d in found if isinstance(d, TaskDefinition)]


def _add_to_module(definition: TaskDefinition) -> None:
    """Append to the defining module's list; a function with no importable module (code
    run by ``exec`` without ``__name__``) is still a task, just not a discoverable one."""
    module = sys.modules.get(getattr(definition.func, "__module__", None) or "")
    if module is not None:
        vars(module).setdefault(MODULE_ATTRIBUTE, []).append(definition)


@overload
def task(func: F, /) -> F: ...


@overload
def task(
    *,
    every: float | timedelta | str | None = None,
    at: str | None = None,
    days: str | None = None,
    cron: str | None = None,
    name: str | None = None,
    timeout: float | None = None,
    blocking: bool = False,
    enabled: bool = True,
    options: Mapping[str, Any] | None = None,
) -> Callable[[F], F]: ...


def task(
    func: F | None = None,
    /,
    *,
    every: float | timedelta | str | None = None,
    at: str | None = None,
    days: str | None = None,
    cron: str | None = None,
    name: str | None = None,
    timeout: float | None = None,
    blocking: bool = False,
    enabled: bool = True,
    options: Mapping[str, Any] | None = None,
) -> F | Callable[[F], F]:
    """Declare a background task. Exactly one of `every=`, `at=` (with `days=`), `cron=`.

    `options` declares the task's own settings and their defaults; the params file sets
    them as `<name>.<option> = value`, and the task reads them from `ctx.options`. It may
    also be called as a function (`task(fn, every=60, name=f"sync_{i}")`, in a loop, or
    inside a function): the task belongs to the module that defines `fn`.
    """

    def decorate(fn: F) -> F:
        definition = _define(
            fn,
            name=name or fn.__name__,
            schedule={"every": every, "at": at, "days": days, "cron": cron},
            timeout=timeout,
            flags={"blocking": blocking, "enabled": enabled},
            options=dict(options or {}),
        )
        setattr(fn, ATTRIBUTE, definition)
        _add_to_module(definition)
        return fn

    return decorate(func) if func is not None else decorate


def _define(
    fn: Callable[..., Any],
    *,
    name: str,
    schedule: dict[str, Any],
    timeout: float | None,
    flags: dict[str, bool],
    options: dict[str, Any],
) -> TaskDefinition:
    def fail(problem: str) -> TaskDefinitionError:
        shown = repr(name) if len(str(name)) <= 80 else f"{str(name)[:60]!r}..."
        return TaskDefinitionError(f"task {shown} ({fn.__module__}.{fn.__qualname__}): {problem}")

    problem = name_problem(name)
    if problem:
        raise fail(problem)
    is_async = inspect.iscoroutinefunction(fn)
    if flags["blocking"] and is_async:
        raise fail("blocking=True is for plain functions; this one is `async def`")
    if not flags["blocking"] and not is_async:
        raise fail("is not `async def`; pass blocking=True to run it in a worker thread")
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise fail(f"timeout={timeout!r} must be a positive number of seconds")
    clash = COMMON_OPTIONS & set(options)
    if clash:
        raise fail(f"options may not redefine the common settings {sorted(clash)}")
    try:
        parse_schedule(**schedule, tz=ZoneInfo("UTC"))
    except ScheduleError as exc:
        raise fail(str(exc)) from None
    return TaskDefinition(
        name=name,
        func=fn,
        every=schedule["every"],
        at=schedule["at"],
        days=schedule["days"],
        cron=schedule["cron"],
        timeout_s=float(timeout) if timeout is not None else None,
        blocking=flags["blocking"],
        enabled=flags["enabled"],
        options=options,
        description=(inspect.getdoc(fn) or "").split("\n", 1)[0],
    )
