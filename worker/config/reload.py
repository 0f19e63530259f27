"""SIGHUP: re-read the configuration and apply what can change while running.

The new settings are loaded exactly as at start (same files, environment and flags). An
invalid configuration is rejected with one clear log line and the old one stays in
force: a reload never kills the service. Each setting is either applied live (`LIVE`) or
named in the log as needing a restart (`NEEDS_RESTART`, and kept at its running value so
the running state does not lie about it); a setting in neither list is a restart too, so
the log never claims more than was applied.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace

import structlog

from cronloop.config.settings import ConfigError, Settings
from cronloop.definitions.jobs import JobDefinition
from cronloop.definitions.registry import Registry, TaskDefinition, build_registry

log = structlog.get_logger("cronloop.reload")

# Settings read once at start-up, and so applied only by a restart. Every other setting is
# applied live: the supervisor reads it at each tick (`poll_interval`, `max_concurrency`,
# `shutdown_grace`), each new run reads it (`grace_s`, `retry_max`, `retry_delay_s`, the
# thread pool's size from `max_concurrency`, what tasks see in `ctx.settings`), or the
# rebuilt registry carries it (`task_timeout`, `timezone`, task options); the reloader
# re-configures logging (`log_level`, `verbose`). tests/unit/config/test_reload.py holds
# this list against every field of `Settings`.
NEEDS_RESTART = frozenset(
    {
        "database_url",
        "database_hosts",
        "max_clock_skew_s",  # the store's expiry rule, built at start
        "database_password",
        "database_password_file",
        "db_pool_size",  # the engine's pool, built at start
        "lease_s",  # leases already taken were sized by it
        "task_modules",
        "allow_root",
        "auto_migrate",
        "startup_db_wait_s",
        "watchdog_s",
        "quarantine_strikes",  # the watchdog's strike recorder, built at start
        "quarantine_timeouts",  # the store's quarantine rule, built at start
        "max_lifetime",  # the lifetime is drawn once, at start
        "lifetime_jitter_s",
        "log_format",
        "http_listen",  # the HTTP listener, bound at start
        "http_token",
        "http_allow_insecure",
    }
)
LIVE = frozenset(
    {
        "poll_interval",
        "max_concurrency",
        "task_timeout",
        "grace_s",
        "shutdown_grace",
        "timezone",
        "verbose",
        "log_level",
        "job_retention_days",
        "retry_max",
        "retry_delay_s",
    }
)
_NOT_SETTINGS = frozenset({"sources", "param_files", "task_options"})


@dataclass(frozen=True)
class Reloaded:
    settings: Settings
    registry: Registry
    live: list[str]  # setting keys applied now
    restart: list[str]  # setting keys that only a restart applies


def changed_keys(old: Settings, new: Settings) -> list[str]:
    keys = [f.name for f in fields(Settings) if f.name not in _NOT_SETTINGS]
    changed = [k for k in keys if getattr(old, k) != getattr(new, k)]
    if _options(old) != _options(new):
        changed.append("task options")
    return changed


def _options(settings: Settings) -> dict[str, dict[str, str]]:
    return {t: {k: v.value for k, v in opts.items()} for t, opts in settings.task_options.items()}


def reload_settings(
    current: Settings,
    load: Callable[[], Settings],
    definitions: Iterable[TaskDefinition],
    job_definitions: Iterable[JobDefinition] = (),
) -> Reloaded | None:
    """Load and validate the new configuration; None (and a log line) if it is invalid."""
    try:
        new = load()
        registry = build_registry(new, definitions, job_definitions)
    except ConfigError as exc:
        log.error(
            "configuration reload rejected; keeping the running configuration",
            problems=list(exc.problems) if hasattr(exc, "problems") else str(exc),
        )
        return None
    changed = changed_keys(current, new)
    live = [k for k in changed if k in LIVE or k == "task options"]
    restart = [k for k in changed if k not in live]
    # keep what only a restart can change, so the running state does not lie about it
    kept = replace(new, **{k: getattr(current, k) for k in restart})
    return Reloaded(settings=kept, registry=registry, live=live, restart=restart)


def report(result: Reloaded, tasks: Sequence[str]) -> None:
    log.info(
        "configuration reloaded",
        applied=result.live or None,
        needs_restart=result.restart or None,
        tasks=len(tasks),
    )
    if result.restart:
        log.warning(
            "some changes take effect only after a restart (systemctl restart cronloop)",
            settings=result.restart,
        )
