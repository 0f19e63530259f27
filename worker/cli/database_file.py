"""Only `run` and `migrate` create a database: every other command refuses a missing file.

An admin command that silently created and migrated an empty SQLite file (in whatever
directory the admin stood in) would then report success on nothing. So before connecting,
`missing_database` checks that the SQLite file the settings name exists, and otherwise
says why not (`cli.bootstrap` stops the command with it, exit 1), naming the path it
looked for and the service's database if one is found elsewhere. Server databases
(MySQL/MariaDB) are never checked here. This module knows where the embedded database is
looked for (``config.paths``), not what it holds.
"""

from __future__ import annotations

from pathlib import Path

from cronloop.config.paths import state_directory, system_state_directory
from cronloop.config.settings import Settings
from cronloop.store.sql.engine import SQLITE_FILE, resolve_url, sqlite_file

__all__ = ["missing_database"]


def missing_database(settings: Settings) -> str | None:
    """Why the SQLite database of `settings` cannot be used, or None when it exists (or
    the database is a server's)."""
    path = sqlite_file(resolve_url(settings))
    if path is None:
        return None
    path = path.resolve()
    try:
        if path.exists():
            return None
    except PermissionError:
        return (
            f"cannot look for the database {path}: permission denied on {path.parent} "
            "(run the command as the service user, e.g. `sudo -u cronloop cronloop ...`)"
        )
    return _missing(path)


def _missing(path: Path) -> str:
    lines = [
        f"no database at {path}: only `cronloop run` and `cronloop migrate` create one",
    ]
    service = (system_state_directory() / SQLITE_FILE).resolve()
    others = [other for other in _known_databases() if other != path]
    for other in others:
        whose = "the service's database is" if other == service else "a cronloop database is at"
        lines.append(f"{whose} {other}")
    if not others:
        lines.append(
            "the embedded database is $STATE_DIRECTORY/cronloop.db, else "
            f"{system_state_directory() / SQLITE_FILE} on a deployed host, else "
            "./var/cronloop.db (see README, 'Where the database is')"
        )
    return "\n".join(lines)


def _known_databases() -> list[Path]:
    """Existing embedded databases where the rule would look: the state directory as
    systemd sets it, the system one, and ./var."""
    candidates = [
        state_directory() / SQLITE_FILE,
        system_state_directory() / SQLITE_FILE,
        Path.cwd() / "var" / SQLITE_FILE,
    ]
    found: list[Path] = []
    for candidate in candidates:
        try:
            if candidate.is_file() and candidate.resolve() not in found:
                found.append(candidate.resolve())
        except PermissionError:
            continue
    return found
