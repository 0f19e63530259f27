"""Which tasks exist: the `@task` decorator, `TaskSpec`, and discovery.

Definitions are checked when the decorator runs, so a malformed task is an error at
start-up that names the task, never a crash at its first run. Per-task settings from the
params file (`backup.time = 23:30`, `email.enabled = 0`) are applied in `build_registry`;
a bad schedule there disables that one task, with the reason, and the others keep going.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from importlib.metadata import entry_points
from typing import Any, TypeVar, overload
from zoneinfo import ZoneInfo

from cronloop.config.params import normalize_key
from cronloop.config.settings import ConfigError, Settings
from cronloop.domain.schedule import Schedule, ScheduleError, parse_schedule, resolve_timezone

ENTRY_POINT_GROUP = "cronloop.tasks"
SCHEDULE_OPTIONS = {"every", "at", "time", "days", "week_days", "cron"}
COMMON_OPTIONS = SCHEDULE_OPTIONS | {"enabled", "timeout"}

TaskFunc = Callable[..., Awaitable[str | None]] | Callable[..., str | None]
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
    isolate: bool
    options: Mapping[str, Any]
    description: str

    @property
    def module(self) -> str:
        return str(self.func.__module__)


@dataclass(frozen=True)
class TaskSpec:
    """A task as this worker will run it: definition plus settings applied."""

    name: str
    func: Callable[..., Any]
    schedule: Schedule | None  # None when the schedule settings are invalid
    timeout_s: float
    blocking: bool = False
    enabled: bool = True
    isolate: bool = False
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets
    error: str | None = None  # why the task is disabled by configuration
    description: str = ""

    @property
    def runnable(self) -> bool:
        return self.enabled and self.schedule is not None and self.error is None

    @property
    def schedule_text(self) -> str:
        return self.schedule.describe() if self.schedule else "invalid"


_definitions: list[TaskDefinition] = []


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
    isolate: bool = False,
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
    isolate: bool = False,
    options: Mapping[str, Any] | None = None,
) -> F | Callable[[F], F]:
    """Declare a background task. Exactly one of `every=`, `at=` (with `days=`), `cron=`.

    `options` declares the task's own settings and their defaults; the params file sets
    them as `<name>.<option> = value`, and the task reads them from `ctx.options`.
    """

    def decorate(fn: F) -> F:
        definition = _define(
            fn,
            name=name or fn.__name__,
            schedule={"every": every, "at": at, "days": days, "cron": cron},
            timeout=timeout,
            flags={"blocking": blocking, "enabled": enabled, "isolate": isolate},
            options=dict(options or {}),
        )
        _definitions.append(definition)
        fn.__cronloop_task__ = definition  # type: ignore[attr-defined]
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
        return TaskDefinitionError(f"task {name!r} ({fn.__module__}.{fn.__qualname__}): {problem}")

    if not name.replace("_", "").replace("-", "").isalnum() or "." in name:
        raise fail("name must be letters, digits, '_' or '-' (it is used as a settings prefix)")
    if flags["isolate"]:
        # a child process per run is planned (issue 3's optional part), not built yet:
        # refuse rather than silently run the task in-process
        raise fail("isolate=True (run in a child process) is not supported yet")
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
        isolate=flags["isolate"],
        options=options,
        description=(inspect.getdoc(fn) or "").split("\n", 1)[0],
    )


@dataclass(frozen=True)
class Registry:
    """The tasks this worker knows, by name."""

    specs: Mapping[str, TaskSpec]

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


def discover(task_modules: Iterable[str], *, use_entry_points: bool = True) -> list[TaskDefinition]:
    """Import the task modules and return the definitions they made.

    Entry points in the `cronloop.tasks` group name a module (or package) to import; the
    `task_modules` setting adds more. A module that fails to import is a startup error
    naming it, because a silently missing task is worse than a worker that will not start.
    """
    prefixes: list[str] = []
    if use_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            _import(ep.module, f"entry point {ep.name!r} in group {ENTRY_POINT_GROUP}")
            prefixes.append(ep.module)
    for module in task_modules:
        _import(module, "setting task_modules")
        prefixes.append(module)
    chosen: dict[str, TaskDefinition] = {}
    for definition in _definitions:
        if not any(_in_module(definition.module, p) for p in prefixes):
            continue
        other = chosen.get(definition.name)
        if other is not None and other.func is not definition.func:
            raise TaskDefinitionError(
                f"task {definition.name!r} is defined twice: in {other.module} and "
                f"{definition.module}; give one of them name="
            )
        chosen[definition.name] = definition
    return list(chosen.values())


def _in_module(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _import(module: str, where: str) -> None:
    try:
        importlib.import_module(module)
    except Exception as exc:
        raise ConfigError(f"cannot import task module {module!r} ({where}): {exc!r}") from exc


def build_registry(settings: Settings, definitions: Iterable[TaskDefinition]) -> Registry:
    """Combine definitions with the per-task settings; validate those settings.

    Unknown task names and unknown options in the settings are configuration errors (a
    typo must not silently leave a task on its default); a bad schedule value only
    disables that task.
    """
    tz = resolve_timezone(settings.timezone)
    by_name = {d.name: d for d in definitions}
    problems = _unknown_task_options(settings, {normalize_key(n): d for n, d in by_name.items()})
    specs: dict[str, TaskSpec] = {}
    for d in by_name.values():
        raw = settings.task_options.get(normalize_key(d.name), {})
        spec, spec_problems = _spec_from(d, raw, settings, tz)
        problems.extend(spec_problems)
        specs[d.name] = spec
    if problems:
        raise ConfigError("\n".join(problems))
    return Registry(specs=dict(sorted(specs.items())))


def _unknown_task_options(settings: Settings, by_name: Mapping[str, TaskDefinition]) -> list[str]:
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
            problems.append(f"{pv.origin}: {d.name}.{key} = {pv.value!r}: {exc}")
    enabled = d.enabled
    if "enabled" in values:
        try:
            enabled = bool(_convert_like(True, values["enabled"].value))
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
        isolate=d.isolate,
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


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _convert_like(default: Any, text: str) -> Any:
    """Convert a params-file string to the type of the option's declared default."""
    value = text.strip()
    if isinstance(default, bool):
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        raise ValueError("expected 1/0, true/false, yes/no or on/off")
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


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise ValueError("must be > 0 seconds")
    return value
