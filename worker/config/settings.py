"""Where settings come from and which wins: ``load_settings``, validation, file permissions.

Sources, lowest to highest precedence:

1. the defaults (the field defaults of ``Settings``);
2. params files (iTop syntax, ``cronloop.config.params``): ``param_file`` (comma-separated,
   later files win), else ``$CRONLOOP_PARAM_FILE``, else ``./cronloop.params`` if it exists, else
   ``/etc/cronloop/cronloop.params`` if it exists. An explicitly named file must exist;
   an empty name means "no params file";
3. environment variables ``CRONLOOP_<KEY>`` (``CRONLOOP_POLL_INTERVAL``) and, for per-task
   options, ``CRONLOOP_<TASK>__<OPTION>``; other ``CRONLOOP_*`` variables are ignored;
4. command-line overrides (``--key=value``, parsed by the CLI).

iTop's names ``cron_max_execution_time`` and ``cron_sleep`` are aliases of ``max_lifetime``
and ``poll_interval`` in every source. Keys with a dot (``backup.time``) are per-task options,
collected unvalidated in ``Settings.task_options`` for the registry to check.

The password has its own ladder: command line > ``CRONLOOP_DATABASE_PASSWORD`` > the systemd
credential ``$CREDENTIALS_DIRECTORY/database_password`` > ``database_password_file`` > the
params file's ``database_password``. ``http_token`` (the web API's bearer token) has a
shorter one: ``CRONLOOP_HTTP_TOKEN`` > the credential ``http_token`` > the params file.

``load_settings`` is pure given its inputs (no global state), so SIGHUP can call it again.
Every problem found is reported at once in one ``ConfigError`` (exit status 78), each naming
the key and where it came from; no message ever contains a password.

The model (``Settings``, its keys and parsers, masking) is ``cronloop.config.model``; its
names are re-exported here, the one import path callers use. This module never knows
databases or tasks.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from cronloop.config.model import (
    ALIASES,
    MOVED_KEYS,
    PARSERS,
    SETTING_KEYS,
    ConfigError,
    Secret,
    Settings,
    describe_sources,
)
from cronloop.config.params import (
    ParamsError,
    ParamValue,
    is_valid_key,
    normalize_key,
    read_params_file,
    split_file_list,
)
from cronloop.config.paths import state_directory
from cronloop.config.values import (
    file_mode_problem,
    foreign_file_problem,
    holds_secret,
    mask_url,
    read_secret_file,
)

__all__ = [
    "ALIASES",
    "DEFAULT_PARAM_FILES",
    "SETTING_KEYS",
    "ConfigError",
    "Secret",
    "Settings",
    "describe_sources",
    "load_settings",
    "state_directory",
]

DEFAULT_PARAM_FILES: tuple[str, ...] = ("cronloop.params", "/etc/cronloop/cronloop.params")
"""Searched in order when no params file is named; the first that exists is read."""


_ENV_PREFIX = "CRONLOOP_"
_PARAM_FILE_KEY = "param_file"
_CREDENTIAL_NAME = "database_password"
_FILE, _ENV, _FLAG = 1, 2, 3  # precedence ranks (0 = default)

_ITOP_ONLY = frozenset({"auth_user", "auth_pwd", "status_only", "debug"})


@dataclass(frozen=True)
class _Raw:
    """A setting's text as given by one source, before parsing."""

    param: ParamValue  # key as written (normalised), value, where
    rank: int

    @property
    def where(self) -> str:
        return self.param.where


def load_settings(
    *,
    param_file: str | None = None,
    overrides: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build the effective ``Settings`` from defaults, params files, environment and flags.

    ``overrides`` are the command line's ``--key=value`` pairs (a ``param_file`` entry there
    is used when the ``param_file`` argument is None). ``env`` defaults to ``os.environ``.
    Raises ``ConfigError`` listing every problem.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    flags = {_flag_key(key): value for key, value in (overrides or {}).items()}
    if param_file is None:
        param_file = flags.get(_PARAM_FILE_KEY)
    flags.pop(_PARAM_FILE_KEY, None)
    problems: list[str] = []
    paths, implicit = _param_file_paths(param_file, environ)
    opened: dict[str, os.stat_result] = {}  # each file's fstat, as it was read
    file_values = _read_files(paths, problems, implicit=implicit, opened=opened)
    loader = _Loader(problems)
    loader.add_all(file_values, _FILE)
    loader.add_all(_env_values(environ), _ENV)
    loader.add_all(_flag_values(flags), _FLAG)
    loader.resolve_password(environ)
    loader.resolve_token(environ)
    values, sources = loader.parse()
    _apply_verbose(values, sources, loader.raw)
    _check_file_modes(paths, file_values, problems, opened)
    if problems:
        raise ConfigError(problems)
    return Settings(
        **values,  # type: ignore[arg-type]  # keys and types checked by PARSERS
        task_options=loader.frozen_options(),
        sources=MappingProxyType(sources),
        param_files=tuple(paths),
    )


class _Loader:
    """Collects raw values by precedence, then parses them; problems go to one list."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.raw: dict[str, _Raw] = {}
        self.options: dict[str, dict[str, ParamValue]] = {}

    def add_all(self, params: list[ParamValue], rank: int) -> None:
        """Apply one source's values in order; later ones win."""
        for param in params:
            self.add(param, rank)

    def add(self, param: ParamValue, rank: int) -> None:
        if not is_valid_key(param.key):
            self.problems.append(f"{param.where}: invalid key {param.key!r}")
            return
        if "." in param.key:
            task, _, option = param.key.rpartition(".")
            self.options.setdefault(task, {})[option] = param
            return
        key = ALIASES.get(param.key, param.key)
        if key in MOVED_KEYS:
            self.problems.append(
                f"{param.where}: {param.key!r} is no longer a cronloop setting: it is the task "
                f"option {MOVED_KEYS[key]!r} now; write `{MOVED_KEYS[key]} = ...` instead"
            )
        elif key in PARSERS:
            self.raw[key] = _Raw(param, rank)
        else:
            self.problems.append(f"{param.where}: {_unknown_key(param.key)}")

    def resolve_password(self, environ: Mapping[str, str]) -> None:
        """Apply the password ladder: flag > env > credentials > password file > params file."""
        from_file = self._password_from_file()
        from_credentials = _password_from_credentials(environ, self.problems)
        current = self.raw.get("database_password")
        if current is not None and current.rank >= _ENV:
            return
        chosen = from_credentials or from_file
        if chosen is not None:
            self.raw["database_password"] = _Raw(chosen, _FILE)

    def resolve_token(self, environ: Mapping[str, str]) -> None:
        """``http_token``: env > the systemd credential ``http_token`` > params file."""
        current = self.raw.get("http_token")
        if current is not None and current.rank >= _ENV:
            return
        found = _credential(environ, "http_token", self.problems)
        if found is not None:
            self.raw["http_token"] = _Raw(found, _FILE)

    def _password_from_file(self) -> ParamValue | None:
        """Read ``database_password_file`` whenever it is set: a bad path is always an error."""
        raw = self.raw.get("database_password_file")
        if raw is None or not raw.param.value:
            return None
        path = raw.param.value
        where = f"{raw.where}: database_password_file {path!r}"
        secret = "holds the database password"
        try:  # its mode judged on the file as it is read
            text = read_secret_file(
                Path(path), lambda info: file_mode_problem(path, secret=secret, info=info)
            )
        except ValueError as exc:
            self.problems.append(f"{where}: {exc}")
            return None
        return ParamValue("database_password", text, f"database_password_file {path}", 0)

    def parse(self) -> tuple[dict[str, object], dict[str, str]]:
        """Typed values and source texts for every setting given; errors to ``problems``."""
        values: dict[str, object] = {}
        sources = dict.fromkeys(SETTING_KEYS, "default")
        for key, raw in self.raw.items():
            # A password is taken verbatim (spaces included); a file value is trimmed already.
            text = raw.param.value if key == "database_password" else raw.param.value.strip()
            try:
                values[key] = PARSERS[key](text)
            except ValueError as exc:
                shown = mask_url(raw.param.value)  # any value may be a URL with a password
                self.problems.append(f"{raw.where}: {raw.param.key} = {shown!r}: {exc}")
                continue
            alias = f" (as {raw.param.key})" if raw.param.key != key else ""
            sources[key] = raw.where + alias
        return values, sources

    def frozen_options(self) -> Mapping[str, Mapping[str, ParamValue]]:
        return MappingProxyType(
            {task: MappingProxyType(dict(opts)) for task, opts in self.options.items()}
        )


def _unknown_key(key: str) -> str:
    """The message for an unknown key, with the closest known name as a suggestion."""
    if key in _ITOP_ONLY:
        return f"{key!r} is an option of iTop's cron.php that cronloop does not use; remove it"
    known = [*SETTING_KEYS, *ALIASES]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown setting {key!r}{hint} (per-task options are written task.option)"


def _flag_key(key: str) -> str:
    return normalize_key(key.strip().lstrip("-"))


def _param_file_paths(param_file: str | None, environ: Mapping[str, str]) -> tuple[list[str], bool]:
    """The params files to read: named ones (which must exist) or the first default found;
    and whether that one was picked up implicitly (nobody named it)."""
    spec = param_file if param_file is not None else environ.get("CRONLOOP_PARAM_FILE")
    if spec is not None:
        return [os.path.abspath(path) for path in split_file_list(spec)], False
    for candidate in DEFAULT_PARAM_FILES:
        if os.path.exists(candidate):
            return [os.path.abspath(candidate)], True
    return [], False


def _read_files(
    paths: list[str], problems: list[str], *, implicit: bool, opened: dict[str, os.stat_result]
) -> list[ParamValue]:
    """Every file's values; each file's fstat goes to ``opened``, so that its mode is judged
    on the file that was read, not on whatever has its name a moment later. A file picked
    up implicitly (``./cronloop.params`` in whatever directory the command runs in, or the
    system one) must be owned by the invoking user or root and writable by nobody else."""
    errors: list[ParamsError] = []
    values: list[ParamValue] = []
    how = "implicitly (no --param-file, no CRONLOOP_PARAM_FILE)"
    for path in paths:

        def check(info: os.stat_result, path: str = path) -> str:
            opened[path] = info
            return foreign_file_problem(info, how) if implicit else ""

        values.extend(read_params_file(path, errors=errors, check=check))
    problems.extend(f"params file {exc}" for exc in errors)
    return values


def _env_values(environ: Mapping[str, str]) -> list[ParamValue]:
    """``CRONLOOP_<KEY>`` settings and ``CRONLOOP_<TASK>__<OPTION>`` options from the env.

    Unknown names are ignored (the environment is shared with other programs). Aliases
    come first so that the canonical variable wins when both are set.
    """
    found: list[tuple[int, str, ParamValue]] = []
    for name, value in environ.items():
        if not name.startswith(_ENV_PREFIX) or name == "CRONLOOP_PARAM_FILE":
            continue
        rest = name[len(_ENV_PREFIX) :]
        task, sep, option = rest.rpartition("__")
        key = f"{normalize_key(task)}.{normalize_key(option)}" if sep else normalize_key(rest)
        known = key in PARSERS or key in ALIASES or key in MOVED_KEYS
        if not is_valid_key(key) or (not sep and not known):
            continue
        found.append((0 if key in ALIASES else 1, name, ParamValue(key, value, f"env {name}", 0)))
    return [param for _, _, param in sorted(found, key=lambda item: item[:2])]


def _flag_values(flags: Mapping[str, str]) -> list[ParamValue]:
    return [ParamValue(key, value, "command line", 0) for key, value in flags.items()]


def _password_from_credentials(
    environ: Mapping[str, str], problems: list[str]
) -> ParamValue | None:
    """systemd's ``LoadCredential=database_password:...`` file, if the unit provides one."""
    return _credential(environ, _CREDENTIAL_NAME, problems)


def _credential(environ: Mapping[str, str], name: str, problems: list[str]) -> ParamValue | None:
    """The systemd credential ``name`` (``LoadCredential=name:...``), if the unit gives it."""
    directory = environ.get("CREDENTIALS_DIRECTORY", "")
    if not directory:
        return None
    path = Path(directory) / name
    if not path.exists():
        return None
    try:
        text = read_secret_file(path)
    except ValueError as exc:
        problems.append(f"credentials directory: {str(path)!r}: {exc}")
        return None
    return ParamValue(name, text, "credentials directory", 0)


def _apply_verbose(
    values: dict[str, object], sources: dict[str, str], raw: dict[str, _Raw]
) -> None:
    """iTop's ``verbose = 1`` means debug logging, unless log_level is set at a higher level."""
    if not values.get("verbose"):
        return
    verbose_rank = raw["verbose"].rank
    level = raw.get("log_level")
    if level is None or verbose_rank >= level.rank:
        values["log_level"] = "debug"
        sources["log_level"] = f"implied by verbose ({sources['verbose']})"


def _check_file_modes(
    paths: list[str],
    params: list[ParamValue],
    problems: list[str],
    opened: dict[str, os.stat_result],
) -> None:
    """Refuse params files others could rewrite, and secret-holding ones others can read.

    Any file writable by others is refused (it decides which code runs: task_modules). A
    file holding a secret (database_password, a password in database_url, an option named
    like a password) is also refused when others can read it or its group can write it;
    group read is allowed for the usual ``root:cronloop 0640``.
    """
    for path in dict.fromkeys(paths):
        secrets = [p for p in params if p.file == path and _is_secret_param(p)]
        what = f"holds a secret ({secrets[0].key}, line {secrets[0].line})" if secrets else ""
        if path not in opened:
            continue  # it could not be read: reported already
        problem = file_mode_problem(path, secret=what, info=opened[path])
        if problem:
            problems.append(f"params file {path}: {problem}")


def _is_secret_param(param: ParamValue) -> bool:
    return holds_secret(ALIASES.get(param.key, param.key), param.value)
