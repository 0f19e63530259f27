"""Setting values: text in (from a params file, an env var or a flag), typed value out, and back;
and the handling of secrets (masking, password files, file permissions).

Split from ``cronloop.config.settings`` so that module can stay about sources and precedence. Every
parser takes the trimmed text and returns the typed value or raises ``ValueError`` whose
message says what is *expected* (the caller adds the key, the value and the origin).
"""

from __future__ import annotations

import keyword
import math
import os
import pwd
import re
import stat
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote_plus
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy.engine import make_url

__all__ = [
    "MASK",
    "Parser",
    "Secret",
    "choice",
    "duration",
    "file_mode_problem",
    "format_value",
    "holds_secret",
    "integer",
    "is_secret_key",
    "looks_secret",
    "mask_url",
    "parse_bool",
    "parse_database_hosts",
    "parse_database_url",
    "parse_modules",
    "parse_secret",
    "parse_text",
    "parse_timezone",
    "read_secret_file",
    "url_has_password",
]

MASK = "********"
SECRET_KEYS = frozenset({"database_password", "http_token"})
"""Settings that always hold a secret: refused on the command line, masked when shown."""

Parser = Callable[[str], object]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DURATION_RE = re.compile(rf"({_NUMBER})\s*([smhd]?)", re.IGNORECASE)
_INTEGER_RE = re.compile(r"[+-]?\d+")
_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_URL_USERINFO_RE = re.compile(r"(://[^/@:]*:)(.+)@")
# a query parameter's value runs to the next `&name=` (or `;name=`): a password written with
# a bare `&` in it is still masked whole
_QUERY_PARAM_RE = re.compile(r"([^=&;#]+)=(.*?)(?=[&;][^=&;#]+=|$)")
_SECRET_NAME_RE = re.compile(r"pass|pwd|secret|token|api_key|credential")


class Secret:
    """A string that is never printed by accident (passwords).

    ``repr``/``str`` show ``'********'``; ``reveal()`` gives the value to the one place that
    needs it (the database connector). Compared by value, so settings stay comparable.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value: call only where it is handed to the database driver."""
        return self._value

    def __repr__(self) -> str:
        return f"'{MASK}'"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash(self._value)


def parse_text(text: str) -> str:
    """A free string (paths, names); kept as given."""
    return text


def parse_secret(text: str) -> Secret | None:
    """A password; the empty string means "no password"."""
    return Secret(text) if text else None


def parse_bool(text: str) -> bool:
    """iTop writes ``verbose = 1``; people also write true/yes/on. Case-insensitive."""
    folded = text.strip().lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    raise ValueError("expected a boolean: 1/0, true/false, yes/no or on/off")


def duration(
    *, minimum: float = 0.0, above: bool = False, maximum: float | None = None
) -> Callable[[str], float]:
    """A parser of seconds, with an optional unit (``90``, ``1.5``, ``10m``, ``2h``, ``1d``).

    ``minimum`` is inclusive unless ``above`` (then the value must be greater than it).
    """
    bound = _describe_bounds(minimum, above, maximum, " seconds")

    def parse(text: str) -> float:
        match = _DURATION_RE.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                "expected a duration in seconds, optionally with a unit s, m, h or d "
                f"(e.g. 30, 1.5, 10m){bound}"
            )
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]
        if not math.isfinite(seconds) or not _within(seconds, minimum, above, maximum):
            raise ValueError(f"out of range{bound}")
        return seconds

    return parse


def integer(*, minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """A parser of whole numbers with an inclusive range."""
    bound = _describe_bounds(minimum, False, maximum, "")

    def parse(text: str) -> int:
        if not _INTEGER_RE.fullmatch(text.strip()):
            raise ValueError(f"expected a whole number{bound}")
        number = int(text)
        if not _within(number, minimum, False, maximum):
            raise ValueError(f"out of range{bound}")
        return number

    return parse


def choice(*options: str) -> Callable[[str], str]:
    """A parser of one word among ``options`` (case-insensitive; returned lower-case)."""

    def parse(text: str) -> str:
        folded = text.strip().lower()
        if folded not in options:
            raise ValueError(f"expected one of: {', '.join(options)}")
        return folded

    return parse


def parse_timezone(text: str) -> str:
    """An IANA zone name such as ``Europe/Paris``; empty means the system's zone."""
    if not text:
        return ""
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(
            "unknown time zone (expected an IANA name such as Europe/Paris or UTC, "
            "or empty for the system's zone)"
        ) from None
    return text


def parse_modules(text: str) -> tuple[str, ...]:
    """Comma-separated importable module names (``mycompany.cron_tasks, other``)."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    for name in names:
        parts = name.split(".")
        if not all(part.isidentifier() and not keyword.iskeyword(part) for part in parts):
            raise ValueError(
                f"{name!r} is not a module name (expected dotted Python identifiers, "
                "comma-separated)"
            )
    return names


_HOST_RE = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9_.-]+))(?::(?P<port>\d{1,5}))?"
)


def parse_database_hosts(text: str) -> tuple[str, ...]:
    """Comma-separated ``host[:port]`` (``[v6]:port``), in order of preference; empty:
    the host of ``database_url`` alone."""
    hosts = tuple(part.strip() for part in text.split(",") if part.strip())
    for host in hosts:
        match = _HOST_RE.fullmatch(host)
        port = match.group("port") if match else None
        if match is None or (port is not None and not 0 < int(port) < 65536):
            raise ValueError(
                f"{host!r} is not a host (expected host or host:port, comma-separated in "
                "order of preference, e.g. db1:3306, db2:3306)"
            )
    if len(set(hosts)) != len(hosts):
        raise ValueError("a host is named twice")
    return hosts


def parse_database_url(text: str) -> str:
    """A SQLAlchemy URL, checked for syntax only (empty = the embedded SQLite default)."""
    if text:
        try:
            make_url(text)
        except Exception:  # ArgumentError for the shape, ValueError for a bad port
            raise ValueError(
                "not a database URL (expected e.g. mysql+aiomysql://cronloop@db.example/itop "
                "or sqlite+aiosqlite:////var/lib/cronloop/cronloop.db)"
            ) from None
    return text


def url_has_password(url: str) -> bool:
    """Whether a URL carries a password: in its userinfo (``u:pw@``) or as a query parameter
    named like one (``?password=``, ``?passwd=``, ``?api_token=``).

    One rule for every use: such a value is refused on the command line, masked wherever it
    is shown, and makes the file holding it a secret file.
    """
    return mask_url(url) != url


def mask_url(url: str) -> str:
    """The URL with its password, if any, replaced by ``********``: the userinfo password
    and the value of every query parameter whose name looks secret (see ``looks_secret``).

    The userinfo password runs from the user's ``:`` to the *last* ``@``: a password with a
    bare ``@``, ``/`` or ``:`` in it is masked whole (a URL parser would end it at its first
    ``@`` and show the rest as the host). When in doubt, more is masked, never less."""
    masked = _URL_USERINFO_RE.sub(lambda m: f"{m.group(1)}{MASK}@", url, count=1)
    return _mask_query(masked)


def _mask_query(url: str) -> str:
    head, sep, query = url.partition("?")
    if not sep:
        return url

    def mask(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        if value and looks_secret(unquote_plus(name).lower()):
            return f"{name}={MASK}"
        return match.group(0)

    return head + sep + _QUERY_PARAM_RE.sub(mask, query)


def looks_secret(name: str) -> bool:
    """Whether an option name (``smtp_password``, ``api_token``) suggests a secret value."""
    return bool(_SECRET_NAME_RE.search(name))


def holds_secret(key: str, value: str) -> bool:
    """Whether a setting or option (normalised ``key``) given ``value`` is a secret.

    ``database_password``, an option named like a password (``email.smtp_password``), or any
    value that is a URL carrying a password. The one judgement behind the argv refusal, the
    masking of option values, and the permission check of params files.
    """
    return bool(value) and (is_secret_key(key) or url_has_password(value))


def is_secret_key(key: str) -> bool:
    """Whether a normalised setting or option name always holds a secret, whatever its value."""
    if "." in key:
        return looks_secret(key.rpartition(".")[2])
    return key in SECRET_KEYS


def format_value(value: object) -> str:
    """A value as params-file text (``600``, ``1.5``, ``true``, ``a,b``); secrets masked."""
    if value is None:
        return ""
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, tuple):
        return ",".join(format_value(item) for item in value)
    return str(value)


def read_secret_file(path: Path, check: Callable[[os.stat_result], str] | None = None) -> str:
    """A password file's content without its trailing newline (``echo pw > file`` adds one).

    Raises ``ValueError`` with the reason; the reason never contains the content. ``check``
    judges the fstat of the opened file, the one then read: a non-empty answer refuses it.
    """
    try:
        with path.open("rb") as handle:
            problem = check(os.fstat(handle.fileno())) if check is not None else ""
            if problem:
                raise ValueError(problem)
            text = handle.read().decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not valid UTF-8 text") from None
    except FileNotFoundError:
        raise ValueError("no such file") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not a file") from None
    except OSError as exc:
        raise ValueError(f"cannot read: {exc.strerror or type(exc).__name__}") from None
    text = text.removesuffix("\n").removesuffix("\r")
    if not text:
        raise ValueError("the file is empty")
    return text


def file_mode_problem(path: str, *, secret: str = "", info: os.stat_result | None = None) -> str:
    """Why a config file is too open, with the chmod that fixes it; "" when it is fine.

    Writable by others is always refused: the file decides which code runs (task_modules).
    When ``secret`` says what secret the file holds, readable by others or writable by its
    group is refused too; group read stays allowed (``root:cronloop`` mode 0640).
    """
    try:  # ``info``: the fstat of the file as it was read, when the caller has it
        mode = stat.S_IMODE((info or os.stat(path)).st_mode)
    except OSError:
        return ""  # reading it failed and was reported already
    if secret and mode & (stat.S_IROTH | stat.S_IWOTH):
        who = "readable or writable by others"
    elif secret and mode & stat.S_IWGRP:
        who = "writable by its group"
    elif mode & stat.S_IWOTH:
        return f"is writable by others (mode {mode:04o}); run: chmod o-w {path}"
    else:
        return ""
    return (
        f"{secret} but is {who} (mode {mode:04o}); run: chmod 600 {path} "
        f"(or chown root:cronloop {path} && chmod 640 {path})"
    )


def foreign_file_problem(info: os.stat_result, how: str) -> str:
    """Why a config file nobody named (``how``: where it was found) must not be used: it is
    owned by someone else than the invoking user and root, or its group or others may
    write it. "" when it is fine. ``info`` is the ``fstat`` of the opened file."""
    me = os.geteuid()
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in (me, 0):
        why = f"is owned by {_user_name(info.st_uid)}, not by you ({_user_name(me)}) or root"
    elif mode & (stat.S_IWGRP | stat.S_IWOTH):
        why = f"is writable by its group or others (mode {mode:04o})"
    else:
        return ""
    return (
        f"found {how} but {why}: refused, since it decides which code runs; fix its owner "
        "or mode, or name a file with --param-file"
    )


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, OSError):
        return f"uid {uid}"


def _within(value: float, minimum: float, above: bool, maximum: float | None) -> bool:
    low_ok = value > minimum if above else value >= minimum
    return low_ok and (maximum is None or value <= maximum)


def _describe_bounds(minimum: float, above: bool, maximum: float | None, unit: str) -> str:
    """``; must be at least 2 seconds``-style text for error messages."""
    low = f"greater than {format_value(minimum)}" if above else f"at least {format_value(minimum)}"
    high = f" and at most {format_value(maximum)}" if maximum is not None else ""
    return f"; must be {low}{high}{unit}"
