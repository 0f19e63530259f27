"""The `@job` decorator, `JobDefinition`, `JobSpec` and the per-kind settings of jobs.

A job handler is declared like a task, without a schedule: it runs once per `enqueue`,
with the `TaskContext` of a run and the job's JSON arguments as keyword arguments. The
decorator keeps each definition on the function (``__cronloop_job__``) and in the
defining module's ``__cronloop_jobs__`` list, which discovery reads (no global list).
`job_specs` combines the definitions with the params file (`<job>.max_retries = 5`).
This module never knows about the database or the loop.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from cronloop.config.values import duration, integer, parse_bool
from cronloop.definitions.decorator import TaskDefinitionError
from cronloop.domain.jobs import RetryRule

__all__ = [
    "JOB_ATTRIBUTE",
    "JOB_OPTIONS",
    "MODULE_JOBS",
    "JobDefinition",
    "JobSpec",
    "PermanentJobError",
    "job",
    "job_spec",
    "jobs_defined_in",
]

JOB_ATTRIBUTE = "__cronloop_job__"
MODULE_JOBS = "__cronloop_jobs__"
#: the settings a params file may give a job kind: `<job>.<option> = value`
JOB_OPTIONS = frozenset(
    {"timeout", "max_retries", "retry_delay_s", "exponential_delay", "concurrency"}
)

F = TypeVar("F", bound=Callable[..., Any])
_positive_seconds = duration(minimum=0, above=True)
_seconds = duration(minimum=0)


class PermanentJobError(Exception):
    """Raised by a job handler: this job can never succeed, do not retry it."""


@dataclass(frozen=True)
class JobDefinition:
    """What `@job` was given, checked."""

    name: str
    func: Callable[..., Any]
    timeout_s: float | None
    retry: RetryRule
    concurrency: int | None  # at most this many at once per worker; None: no limit
    blocking: bool
    description: str

    @property
    def module(self) -> str:
        return str(self.func.__module__)


@dataclass(frozen=True)
class JobSpec:
    """A job kind as this worker runs it: definition plus settings."""

    name: str
    func: Callable[..., Any]
    timeout_s: float
    retry: RetryRule
    concurrency: int | None
    blocking: bool = False
    description: str = ""


def jobs_defined_in(module: ModuleType) -> list[JobDefinition]:
    """The job definitions the code of ``module`` made, in order."""
    return [d for d in vars(module).get(MODULE_JOBS, ()) if isinstance(d, JobDefinition)]


def job(
    *,
    name: str | None = None,
    timeout: float | None = None,
    max_retries: int = 3,
    retry_delay_s: float = 60.0,
    exponential_delay: bool = True,
    concurrency: int | None = None,
    blocking: bool = False,
) -> Callable[[F], F]:
    """Declare a job handler: `async def handler(ctx, **args)` (or a plain function with
    `blocking=True`). Retries: `max_retries` after the first attempt, `retry_delay_s`
    apart, doubling each time if `exponential_delay`. `concurrency` caps how many of this
    kind one worker runs at once."""

    def decorate(fn: F) -> F:
        definition = _define(
            fn,
            name or fn.__name__,
            timeout,
            RetryRule(max_retries, retry_delay_s, exponential_delay),
            concurrency,
            blocking,
        )
        setattr(fn, JOB_ATTRIBUTE, definition)
        module = sys.modules.get(getattr(fn, "__module__", None) or "")
        if module is not None:
            vars(module).setdefault(MODULE_JOBS, []).append(definition)
        return fn

    return decorate


def _define(
    fn: Callable[..., Any],
    name: str,
    timeout: float | None,
    retry: RetryRule,
    concurrency: int | None,
    blocking: bool,
) -> JobDefinition:
    def fail(problem: str) -> TaskDefinitionError:
        return TaskDefinitionError(f"job {name!r} ({fn.__module__}.{fn.__qualname__}): {problem}")

    if not name.replace("_", "").replace("-", "").isalnum():
        raise fail("name must be letters, digits, '_' or '-' (it is used as a settings prefix)")
    is_async = inspect.iscoroutinefunction(fn)
    if blocking == is_async:
        raise fail("blocking=True is for plain functions" if blocking else "is not `async def`")
    if timeout is not None and not (isinstance(timeout, int | float) and timeout > 0):
        raise fail(f"timeout={timeout!r} must be a positive number of seconds")
    if not isinstance(retry.max_retries, int) or retry.max_retries < 0:
        raise fail(f"max_retries={retry.max_retries!r} must be a whole number >= 0")
    if not isinstance(retry.retry_delay_s, int | float) or retry.retry_delay_s < 0:
        raise fail(f"retry_delay_s={retry.retry_delay_s!r} must be a number of seconds >= 0")
    if concurrency is not None and not (isinstance(concurrency, int) and concurrency > 0):
        raise fail(f"concurrency={concurrency!r} must be a whole number > 0, or None")
    return JobDefinition(
        name=name,
        func=fn,
        timeout_s=float(timeout) if timeout is not None else None,
        retry=retry,
        concurrency=concurrency,
        blocking=blocking,
        description=(inspect.getdoc(fn) or "").split("\n", 1)[0],
    )


def job_spec(
    d: JobDefinition, raw: Mapping[str, Any], default_timeout_s: float
) -> tuple[JobSpec, list[str]]:
    """`d` with its params-file settings (`raw`: key -> ParamValue); the problems found,
    each naming the file, line and setting."""
    values = {key.rsplit(".", 1)[-1]: pv for key, pv in raw.items()}
    problems: list[str] = []
    got: dict[str, Any] = {}
    parsers: dict[str, Callable[[str], Any]] = {
        "timeout": _positive_seconds,
        "max_retries": integer(minimum=0),
        "retry_delay_s": _seconds,
        "exponential_delay": parse_bool,
        "concurrency": integer(minimum=1),
    }
    for key, pv in values.items():
        if key not in JOB_OPTIONS:
            known = ", ".join(sorted(JOB_OPTIONS))
            problems.append(f"{pv.origin}: unknown setting {d.name}.{key}; known: {known}")
            continue
        try:
            got[key] = parsers[key](pv.value)
        except ValueError as exc:
            problems.append(f"{pv.origin}: {d.name}.{key} = {pv.value!r}: {exc}")
    retry = RetryRule(
        got.get("max_retries", d.retry.max_retries),
        float(got.get("retry_delay_s", d.retry.retry_delay_s)),
        got.get("exponential_delay", d.retry.exponential_delay),
    )
    spec = JobSpec(
        name=d.name,
        func=d.func,
        timeout_s=got.get("timeout", d.timeout_s if d.timeout_s is not None else default_timeout_s),
        retry=retry,
        concurrency=got.get("concurrency", d.concurrency),
        blocking=d.blocking,
        description=d.description,
    )
    return spec, problems
