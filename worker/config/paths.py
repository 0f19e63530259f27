"""Where cronloop keeps its files on a host: the rule for the state directory.

The embedded SQLite database (and the default backup and outbox directories) live in the
state directory, found the same way by the service and by every command an admin runs:

1. ``$STATE_DIRECTORY`` (systemd's, first entry of a colon list) when set: the service;
2. else the system state directory ``/var/lib/cronloop`` when the params file in force is
   the system one (``/etc/cronloop/cronloop.params``) or that directory exists: an admin
   on a deployed host, whatever directory they stand in;
3. else ``./var``: a checkout run by hand.

``$CRONLOOP_TEST_SYSTEM_ROOT`` (tests only, never for production) moves the system paths
under another root, so tests can play a deployed host without touching ``/etc`` or
``/var``. This module reads the environment and looks at the file system; it knows
nothing of settings parsing, databases or tasks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "SYSTEM_ROOT_ENV",
    "state_directory",
    "system_params_file",
    "system_state_directory",
]

SYSTEM_ROOT_ENV = "CRONLOOP_TEST_SYSTEM_ROOT"
"""Test-only: the root under which the system paths below are looked for (default ``/``)."""

_SYSTEM_PARAMS = Path("etc/cronloop/cronloop.params")
_SYSTEM_STATE = Path("var/lib/cronloop")


def _environ(env: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if env is None else env


def _system_root(env: Mapping[str, str] | None) -> Path:
    return Path(_environ(env).get(SYSTEM_ROOT_ENV) or "/")


def system_params_file(env: Mapping[str, str] | None = None) -> Path:
    """The system params file, ``/etc/cronloop/cronloop.params``."""
    return _system_root(env) / _SYSTEM_PARAMS


def system_state_directory(env: Mapping[str, str] | None = None) -> Path:
    """The service's state directory on a deployed host, ``/var/lib/cronloop``."""
    return _system_root(env) / _SYSTEM_STATE


def state_directory(
    env: Mapping[str, str] | None = None, *, param_files: Sequence[str] = ()
) -> Path:
    """Where state lives, by the rule of this module's docstring.

    ``param_files`` are the params files in force (``Settings.param_files``).
    """
    for entry in _environ(env).get("STATE_DIRECTORY", "").split(":"):
        if entry:
            return Path(entry)
    system = system_state_directory(env)
    if _is_system_params(param_files, env) or _is_dir(system):
        return system
    return Path.cwd() / "var"


def _is_system_params(param_files: Sequence[str], env: Mapping[str, str] | None) -> bool:
    system = os.path.realpath(system_params_file(env))
    return any(os.path.realpath(path) == system for path in param_files)


def _is_dir(path: Path) -> bool:
    """Whether the directory exists; one we may not even look into exists too."""
    try:
        return path.is_dir()
    except PermissionError:
        return True
