"""Which task modules a worker loads, and the tasks each of them defines.

Discovery is explicit: it imports the task modules of the loaded plugins (entry-point
group ``cronloop.plugins``, `cronloop.definitions.plugin`), the modules named by the older
group ``cronloop.tasks`` (task-only packages) and the ``task_modules`` setting, then
reads the definitions each module's code made (the module's ``__cronloop_tasks__``,
filled by `@task`), and those of the submodules a package imported. Nothing is
collected into a global list, so what one caller (or one test) decorated never leaks into
another's discovery, and a module imported afresh contributes only what it defines now.
This module never knows about settings values, the database or the loop.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from types import ModuleType

from cronloop.config.settings import ConfigError
from cronloop.definitions.decorator import (
    TaskDefinition,
    TaskDefinitionError,
    defined_in,
    name_key,
)
from cronloop.definitions.jobs import JobDefinition, jobs_defined_in
from cronloop.definitions.plugin import Plugin, load_plugins

__all__ = ["ENTRY_POINT_GROUP", "collect", "collect_jobs", "discover", "discover_jobs"]

ENTRY_POINT_GROUP = "cronloop.tasks"


def _roots(
    task_modules: Iterable[str], use_entry_points: bool, plugins: Iterable[Plugin] | None
) -> list[tuple[str, str]]:
    """The modules to import, each with where it was named: plugins, entry points, the
    `task_modules` setting."""
    roots: list[tuple[str, str]] = []
    if plugins is None:
        plugins = load_plugins() if use_entry_points else ()
    for plugin in plugins:
        roots.extend((module, plugin.where()) for module in plugin.task_modules)
    if use_entry_points:
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            roots.append((ep.module, f"entry point {ep.name!r} in group {ENTRY_POINT_GROUP}"))
    roots.extend((module, "setting task_modules") for module in task_modules)
    return roots


def discover_jobs(
    task_modules: Iterable[str],
    *,
    use_entry_points: bool = True,
    plugins: Iterable[Plugin] | None = None,
) -> list[JobDefinition]:
    """The `@job` definitions of the same modules `discover` imports (the same roots, the
    same errors); two functions with one job name are an error naming both modules."""
    chosen: dict[str, JobDefinition] = {}
    for name, where in _roots(task_modules, use_entry_points, plugins):
        for definition in collect_jobs(_import(name, where)):
            other = chosen.get(definition.name)
            if other is not None and other.func is not definition.func:
                raise TaskDefinitionError(
                    f"job {definition.name!r} is defined twice: in {other.module} and "
                    f"{definition.module}; give one of them name="
                )
            chosen[definition.name] = definition
    return list(chosen.values())


def collect_jobs(module: ModuleType) -> list[JobDefinition]:
    """The jobs defined by ``module``'s code and by the submodules it imported."""
    found: list[JobDefinition] = []
    for each in _modules_below(module, module.__name__):
        found.extend(jobs_defined_in(each))
    return found


def discover(
    task_modules: Iterable[str],
    *,
    use_entry_points: bool = True,
    plugins: Iterable[Plugin] | None = None,
) -> list[TaskDefinition]:
    """Import the task modules and return the definitions they make.

    Each plugin names its task modules (`plugins`: default the installed ones, none when
    not `use_entry_points`); entry points in the `cronloop.tasks` group name a module (or
    package) to import; the `task_modules` setting adds more. A module that fails to
    import is a startup error naming it, because a silently missing task is worse than
    a worker that will not start. Two different functions with one task name are an error
    naming both modules.
    """
    chosen: dict[str, TaskDefinition] = {}
    for name, where in _roots(task_modules, use_entry_points, plugins):
        for definition in collect(_import(name, where)):
            key = name_key(definition.name)  # unique regardless of case and of - or _
            other = chosen.get(key)
            if other is not None and (other.func, other.name) != (definition.func, definition.name):
                same = "" if other.name == definition.name else f" (as {other.name!r})"
                raise TaskDefinitionError(
                    f"task {definition.name!r} is defined twice: in {other.module}{same} and "
                    f"{definition.module}; names differing only by case or by - and _ are "
                    "the same task; give one of them name="
                )
            chosen[key] = definition
    return list(chosen.values())


def collect(module: ModuleType) -> list[TaskDefinition]:
    """The tasks defined by ``module``'s code and by the submodules it imported, in order.

    A task imported from elsewhere (``from other import job``) belongs to ``other``: each
    definition is listed by the module whose code defines its function.
    """
    found: list[TaskDefinition] = []
    for each in _modules_below(module, module.__name__):
        found.extend(defined_in(each))
    return found


def _modules_below(module: ModuleType, prefix: str) -> Iterator[ModuleType]:
    """``module``, then every submodule reachable through module attributes (a package's
    ``import_module(f"{__name__}.x")`` binds ``x`` on the package), each once."""
    seen: set[str] = set()
    pending = [module]
    while pending:
        each = pending.pop(0)
        if each.__name__ in seen:
            continue
        seen.add(each.__name__)
        yield each
        for value in list(vars(each).values()):
            if isinstance(value, ModuleType) and _in_module(value.__name__, prefix):
                pending.append(value)


def _in_module(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _import(module: str, where: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except TaskDefinitionError:
        raise  # names the task and its module already
    except Exception as exc:
        raise ConfigError(f"cannot import task module {module!r} ({where}): {exc!r}") from exc
