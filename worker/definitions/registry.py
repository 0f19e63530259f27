"""The tasks a worker runs: `TaskSpec`, the `Registry` object, and per-task settings.

`build_registry` combines the definitions discovery found with the params file's
per-task settings (`backup.time = 23:30`, `email.enabled = 0`): unknown task names and
unknown options are configuration errors, a bad schedule there disables that one task
with the reason, and the others keep going. This module never knows how tasks were
found (that is `cronloop.definitions.discovery`), nor the database or the loop.

The names of the decorator and of discovery are re-exported here, where callers have
always imported them from.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from cronloop.config.params import normalize_key
from cronloop.config.settings import ConfigError, Settings
from cronloop.config.values import MASK, duration, looks_secret, mask_url, parse_bool
from cronloop.definitions.decorator import (
    COMMON_OPTIONS,
    SCHEDULE_OPTIONS,
    TaskDefinition,
    TaskDefinitionError,
    task,
)
from cronloop.definitions.discovery import ENTRY_POINT_GROUP, discover
from cronloop.definitions.jobs import JobDefinition, JobSpec, job_spec
from cronloop.domain.schedule import Schedule, ScheduleError, parse_schedule, resolve_timezone

__all__ = [
    "COMMON_OPTIONS",
    "ENTRY_POINT_GROUP",
    "SCHEDULE_OPTIONS",
    "Registry",
    "TaskDefinition",
    "TaskDefinitionError",
    "TaskSpec",
    "build_registry",
    "discover",
    "task",
]

_positive_seconds = duration(minimum=0, above=True)


@dataclass(frozen=True)
class TaskSpec:
    """A task as this worker will run it: definition plus settings applied."""

    name: str
    func: Callable[..., Any]
    schedule: Schedule | None  # None when the schedule settings are invalid
    timeout_s: float
    blocking: bool = False
    enabled: bool = True
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets
    error: str | None = None  # why the task is disabled by configuration
    description: str = ""

    @property
    def runnable(self) -> bool:
        return self.enabled and self.schedule is not None and self.error is None

    @property
    def schedule_text(self) -> str:
        return self.schedule.describe() if self.schedule else "invalid"


@dataclass(frozen=True)
class Registry:
    """The tasks this worker knows, by name, and the job kinds it runs."""

    specs: Mapping[str, TaskSpec]
    jobs: Mapping[str, JobSpec] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.specs

    def __getitem__(self, name: str) -> TaskSpec:
        return self.specs[name]

    def __iter__(self) -> Any:
        return iter(self.specs.values())

    def __len__(self) -> int:
        return len(self.specs)

    def names(self) -> list[str]:
        return sorted(self.specs)


def build_registry(
    settings: Settings,
    definitions: Iterable[TaskDefinition],
    job_definitions: Iterable[JobDefinition] = (),
) -> Registry:
    """Combine definitions with the per-task settings; validate those settings.

    Unknown task names and unknown options in the settings are configuration errors (a
    typo must not silently leave a task on its default); a bad schedule value only
    disables that task.
    """
    tz = resolve_timezone(settings.timezone)
    by_name = {d.name: d for d in definitions}
    jobs_by_name = {d.name: d for d in job_definitions}
    known: dict[str, TaskDefinition | JobDefinition] = {
        normalize_key(n): d for n, d in by_name.items()
    }
    known.update((normalize_key(n), d) for n, d in jobs_by_name.items())
    problems = _unknown_task_options(settings, known)
    problems.extend(
        f"{name!r} is both a task ({by_name[name].module}) and a job ({d.module}); "
        "rename one of them (they share the settings prefix)"
        for name, d in jobs_by_name.items()
        if name in by_name
    )
    specs: dict[str, TaskSpec] = {}
    for d in by_name.values():
        raw = settings.task_options.get(normalize_key(d.name), {})
        spec, spec_problems = _spec_from(d, raw, settings, tz)
        problems.extend(spec_problems)
        specs[d.name] = spec
    jobs: dict[str, JobSpec] = {}
    for jd in jobs_by_name.values():
        raw = settings.task_options.get(normalize_key(jd.name), {})
        jobs[jd.name], job_problems = job_spec(jd, raw, float(settings.task_timeout))
        problems.extend(job_problems)
    if problems:
        raise ConfigError("\n".join(problems))
    return Registry(specs=dict(sorted(specs.items())), jobs=dict(sorted(jobs.items())))


def _unknown_task_options(
    settings: Settings, by_name: Mapping[str, TaskDefinition | JobDefinition]
) -> list[str]:
    problems = []
    for task_name, opts in settings.task_options.items():
        if task_name in by_name:
            continue
        for value in opts.values():
            close = difflib.get_close_matches(task_name, list(by_name), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(
                f"{value.origin}: setting {task_name}.{value.key.rsplit('.', 1)[-1]}: "
                f"no task named {task_name!r}{hint}"
            )
    return problems


def _spec_from(
    d: TaskDefinition, raw: Mapping[str, Any], settings: Settings, tz: ZoneInfo
) -> tuple[TaskSpec, list[str]]:
    values = {key.rsplit(".", 1)[-1]: pv for key, pv in raw.items()}
    problems: list[str] = []
    options = dict(d.options)
    for key, pv in values.items():
        if key in COMMON_OPTIONS:
            continue
        if key not in d.options:
            known = sorted(COMMON_OPTIONS | set(d.options))
            problems.append(
                f"{pv.origin}: unknown setting {d.name}.{key}; known: {', '.join(known)}"
            )
            continue
        try:
            options[key] = _convert_like(d.options[key], pv.value)
        except ValueError as exc:
            shown = MASK if looks_secret(key) else repr(mask_url(pv.value))
            problems.append(f"{pv.origin}: {d.name}.{key} = {shown}: {exc}")
    enabled = d.enabled
    if "enabled" in values:
        try:
            enabled = parse_bool(values["enabled"].value)
        except ValueError as exc:
            problems.append(f"{values['enabled'].origin}: {d.name}.enabled: {exc}")
    timeout_s = d.timeout_s if d.timeout_s is not None else float(settings.task_timeout)
    if "timeout" in values:
        try:
            timeout_s = _positive_seconds(values["timeout"].value)
        except ValueError as exc:
            problems.append(f"{values['timeout'].origin}: {d.name}.timeout: {exc}")
    schedule, error = _schedule_from(d, values, tz)
    spec = TaskSpec(
        name=d.name,
        func=d.func,
        schedule=schedule,
        timeout_s=timeout_s,
        blocking=d.blocking,
        enabled=enabled,
        options=options,
        error=error,
        description=d.description,
    )
    return spec, problems


def _schedule_from(
    d: TaskDefinition, values: Mapping[str, Any], tz: ZoneInfo
) -> tuple[Schedule | None, str | None]:
    """The code's schedule, overridden by settings; an error string instead of raising."""
    given = {k: values[k] for k in SCHEDULE_OPTIONS if k in values}
    kinds = {"every" if k == "every" else "cron" if k == "cron" else "at" for k in given}
    base: dict[str, Any] = {"every": d.every, "at": d.at, "days": d.days, "cron": d.cron}
    if kinds:
        # A schedule setting replaces the code's schedule kind; `backup.week_days` alone
        # keeps the code's time.
        if kinds != {"at"} or d.at is None:
            base = {"every": None, "at": None, "days": None, "cron": None}
        for key, pv in given.items():
            target = {"time": "at", "week_days": "days"}.get(key, key)
            base[target] = pv.value
    try:
        return parse_schedule(**base, tz=tz), None
    except ScheduleError as exc:
        where = ", ".join(sorted({pv.origin for pv in given.values()})) or d.module
        return None, f"{where}: task {d.name!r} disabled: {exc}"


def _convert_like(default: Any, text: str) -> Any:
    """Convert a params-file string to the type of the option's declared default."""
    value = text.strip()
    if isinstance(default, bool):
        return parse_bool(value)
    if isinstance(default, int):
        try:
            return int(value)
        except ValueError:
            raise ValueError("expected a whole number") from None
    if isinstance(default, float):
        try:
            return float(value)
        except ValueError:
            raise ValueError("expected a number") from None
    return value
