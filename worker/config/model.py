"""The settings model: `Settings`, its keys and their parsers, and how it is shown.

`Settings` is the frozen result of loading (``cronloop.config.settings`` owns sources and
precedence, ``load_settings``, and re-exports these names); every setting has exactly one
parser (``PARSERS``, from ``cronloop.config.values``). Showing settings always masks
secrets: ``repr``, ``masked()`` and ``describe_sources`` (``cronloop check-config``) never
contain a password, neither ``database_password`` nor one inside a URL. This module never
reads files or the environment, and knows nothing of databases or tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from cronloop.config.listen import parse_listen
from cronloop.config.params import ParamValue
from cronloop.config.values import (
    MASK,
    Parser,
    Secret,
    choice,
    duration,
    format_value,
    integer,
    looks_secret,
    mask_url,
    parse_bool,
    parse_database_hosts,
    parse_database_url,
    parse_modules,
    parse_secret,
    parse_text,
    parse_timezone,
)

__all__ = [
    "ALIASES",
    "PARSERS",
    "SETTING_KEYS",
    "ConfigError",
    "Secret",
    "Settings",
    "describe_sources",
]

ALIASES: Mapping[str, str] = MappingProxyType(
    {"cron_max_execution_time": "max_lifetime", "cron_sleep": "poll_interval"}
)
"""iTop's setting names, accepted everywhere for the canonical key."""


class ConfigError(Exception):
    """The configuration is wrong; ``problems`` holds one line per problem (exit status 78)."""

    exit_code = 78

    def __init__(self, problems: str | Sequence[str]) -> None:
        lines = problems.splitlines() if isinstance(problems, str) else problems
        self.problems: tuple[str, ...] = tuple(lines)
        super().__init__("\n".join(self.problems))


def _no_options() -> Mapping[str, Mapping[str, ParamValue]]:
    return MappingProxyType({})


def _no_sources() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, repr=False)
class Settings:
    """The effective settings. Durations are seconds (floats).

    Constructible directly with defaults (tests of other modules do); ``load_settings``
    fills ``task_options``, ``sources`` and ``param_files`` as well. ``sources`` is left out
    of equality so two loads that give the same values compare equal.
    """

    database_url: str = ""
    # several nodes (a Galera cluster), in order of preference; empty: database_url's host
    database_hosts: tuple[str, ...] = ()
    database_password: Secret | None = None
    database_password_file: str = ""
    max_lifetime: float = 600.0
    lifetime_jitter_s: float = 5.0
    poll_interval: float = 2.0
    max_concurrency: int = 10
    task_timeout: float = 300.0
    grace_s: float = 5.0
    shutdown_grace: float = 10.0
    lease_s: float = 30.0
    # how far the clocks of the database nodes may disagree: a lease is taken over only
    # once expired by more than this (leases are stamped by one node, read by another)
    max_clock_skew_s: float = 1.0
    timezone: str = ""
    verbose: bool = False
    log_level: str = "info"
    log_format: str = "auto"
    task_modules: tuple[str, ...] = ()
    job_retention_days: int = 7  # done and cancelled jobs; 0 = keep
    auto_migrate: bool = False
    allow_root: bool = False
    startup_db_wait_s: float = 60.0
    retry_max: int = 3
    retry_delay_s: float = 30.0
    quarantine_strikes: int = 2
    quarantine_timeouts: int = 5
    watchdog_s: float = 30.0
    db_pool_size: int = 20
    # the embedded HTTP server (cronloop.web): off unless http_listen is set
    http_listen: str = ""
    http_token: Secret | None = None
    http_allow_insecure: bool = False
    # repr=False: option values may be secrets (smtp_password); see describe_sources().
    task_options: Mapping[str, Mapping[str, ParamValue]] = field(
        default_factory=_no_options, repr=False
    )
    sources: Mapping[str, str] = field(default_factory=_no_sources, compare=False)
    param_files: tuple[str, ...] = ()

    def __repr__(self) -> str:
        """The dataclass repr, but with the URL's password masked (the Secret masks itself)."""
        parts = []
        for f in fields(self):
            if f.repr:
                value = getattr(self, f.name)
                value = mask_url(value) if f.name == "database_url" else value
                parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    def masked(self) -> dict[str, str]:
        """Each setting's effective value as text, passwords (also inside the URL) masked."""
        shown = {key: format_value(getattr(self, key)) for key in SETTING_KEYS}
        shown["database_url"] = mask_url(self.database_url)
        shown["database_password"] = MASK if self.database_password is not None else ""
        return shown


PARSERS: Mapping[str, Parser] = MappingProxyType(
    {
        "database_url": parse_database_url,
        "database_hosts": parse_database_hosts,
        "database_password": parse_secret,
        "database_password_file": parse_text,
        "max_lifetime": duration(minimum=0),
        "lifetime_jitter_s": duration(minimum=0),
        "poll_interval": duration(minimum=0, above=True, maximum=3600),
        "max_concurrency": integer(minimum=1),
        "task_timeout": duration(minimum=0, above=True),
        "grace_s": duration(minimum=0),
        "shutdown_grace": duration(minimum=0),
        "lease_s": duration(minimum=2),
        "max_clock_skew_s": duration(minimum=0, maximum=3600),
        "timezone": parse_timezone,
        "verbose": parse_bool,
        "log_level": choice("debug", "info", "warning", "error"),
        "log_format": choice("auto", "console", "plain", "json", "journal"),
        "task_modules": parse_modules,
        "job_retention_days": integer(minimum=0),
        "auto_migrate": parse_bool,
        "allow_root": parse_bool,
        "startup_db_wait_s": duration(minimum=0),
        "retry_max": integer(minimum=0),
        "retry_delay_s": duration(minimum=0),
        "quarantine_strikes": integer(minimum=1),
        "quarantine_timeouts": integer(minimum=1),
        "watchdog_s": duration(minimum=0, above=True),
        "db_pool_size": integer(minimum=2, maximum=1000),
        "http_listen": parse_listen,
        "http_token": parse_secret,
        "http_allow_insecure": parse_bool,
    }
)

# Settings that became task options: an old params file is refused with the new key's name
# (silently ignoring a backup directory would put the backups somewhere else).
MOVED_KEYS: Mapping[str, str] = MappingProxyType(
    {"backup_dir": "backup.backup_dir", "history_retention_days": "history_gc.retention_days"}
)

SETTING_KEYS: tuple[str, ...] = tuple(
    f.name for f in fields(Settings) if f.name not in {"task_options", "sources", "param_files"}
)
"""The canonical setting names, in declaration order."""

assert set(SETTING_KEYS) == set(PARSERS), "every setting needs exactly one parser"


def describe_sources(settings: Settings) -> list[tuple[str, str, str]]:
    """(key, masked value, source) for ``cronloop check-config``: settings by key, then options.

    Option values whose name looks secret (``smtp_password``) are masked.
    """
    shown = settings.masked()
    rows = [(key, shown[key], settings.sources.get(key, "default")) for key in sorted(shown)]
    for task in sorted(settings.task_options):
        options = settings.task_options[task]
        for option in sorted(options):
            param = options[option]
            value = MASK if looks_secret(option) and param.value else mask_url(param.value)
            rows.append((f"{task}.{option}", value, param.where))
    return rows
