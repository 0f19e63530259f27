"""The iTop-syntax params-file reader: ``key = value`` lines, with the file:line of each value.

This module knows only the file format, not what the keys mean (that is
``cronloop.config.settings``).
The format is iTop's ``--param_file`` format, made stricter where iTop silently loses input:

* ``key = value``; everything from the first ``#`` on a line is a comment, so
  ``size_min = 20 # Megabytes`` gives ``"20"``. Blank lines and comment-only lines are skipped.
* Keys and values are trimmed. Keys are case-insensitive: they are lower-cased and ``-``
  becomes ``_`` (``Poll-Interval`` is ``poll_interval``). A key may contain dots
  (``backup.time``), each dotted part being non-empty.
* An empty value (``key =``) is the empty string.
* A value may be quoted with matching single or double quotes, which are removed; inside
  quotes ``#`` is *not* a comment (``password = "a#b"  # note`` gives ``a#b``). Nothing but
  a comment may follow the closing quote. A quote that is not the first character of the
  value is an ordinary character (``name = it's`` gives ``it's``).
* Stricter than iTop: a line that is neither blank, nor a comment, nor ``key = value`` (a
  typo such as ``poll_interval 5``) is an error naming file:line, instead of being dropped.
* The file must be UTF-8 (a leading byte-order mark is accepted).

Error messages never quote the offending line, since it may hold a password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ParamValue",
    "ParamsError",
    "is_valid_key",
    "normalize_key",
    "parse_params_text",
    "read_params_file",
    "split_file_list",
]

_KEY_PART = r"[a-z0-9_]+"
_KEY_RE = re.compile(rf"{_KEY_PART}(?:\.{_KEY_PART})*")


@dataclass(frozen=True)
class ParamValue:
    """One ``key = value`` as read, with where it came from (for error messages).

    ``line`` is 1-based. Values that did not come from a file (environment, command line)
    use ``line = 0`` and put a description such as ``env CRONLOOP_BACKUP__TIME`` in ``file``.
    """

    key: str
    value: str
    file: str
    line: int

    @property
    def origin(self) -> str:
        """``path:line`` for a file value, else the description held in ``file``."""
        return f"{self.file}:{self.line}" if self.line > 0 else self.file

    @property
    def where(self) -> str:
        """``file /etc/x:3`` for a params-file value, else the description held in ``file``."""
        return f"file {self.origin}" if self.line > 0 else self.file


class ParamsError(ValueError):
    """A params file cannot be read or has a malformed line.

    ``file`` is the path, ``line`` the 1-based line number when the problem is on one line.
    """

    def __init__(self, reason: str, *, file: str, line: int | None = None) -> None:
        self.reason = reason
        self.file = file
        self.line = line
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {reason}")


def normalize_key(key: str) -> str:
    """The canonical spelling of a key: trimmed, lower-cased, ``-`` replaced by ``_``.

    Shared with the settings loader and the registry so that ``Backup.Week-Days`` in a file,
    ``CRONLOOP_BACKUP__WEEK_DAYS`` and ``--backup.week-days`` all name the same option.
    """
    return key.strip().lower().replace("-", "_")


def is_valid_key(key: str) -> bool:
    """Whether a normalised key is well formed: ``[a-z0-9_]`` words joined by single dots."""
    return _KEY_RE.fullmatch(key) is not None


def read_params_file(
    path: str | Path,
    *,
    errors: list[ParamsError] | None = None,
    check: Callable[[os.stat_result], str] | None = None,
) -> list[ParamValue]:
    """Read one params file and return its values in file order.

    Raises ``ParamsError`` on the first problem. When ``errors`` is given, problems are
    appended to it instead and reading goes on, so a caller can report every bad line at
    once (the good lines are still returned). ``check`` is given the ``fstat`` of the
    opened file, the very file that is then read (no race with a rename): a non-empty
    answer refuses the file with that reason.
    """
    name = str(path)
    try:
        text = _read_text(Path(path), name, check)
    except ParamsError as exc:
        if errors is None:
            raise
        errors.append(exc)
        return []
    values, problems = parse_params_text(text, name)
    if problems and errors is None:
        raise problems[0]
    if errors is not None:
        errors.extend(problems)
    return values


def split_file_list(spec: str | Sequence[str]) -> list[str]:
    """The paths of iTop's comma-separated list (``"base.params,local.params"``) or of a
    sequence, trimmed, empty entries dropped; later files win (the caller's rule)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [item.strip() for item in items if item.strip()]


def parse_params_text(text: str, file: str) -> tuple[list[ParamValue], list[ParamsError]]:
    """Parse the text of a params file; ``file`` is only used to label values and errors."""
    values: list[ParamValue] = []
    problems: list[ParamsError] = []
    for number, raw in enumerate(text.split("\n"), start=1):
        try:
            value = _parse_line(raw.rstrip("\r"), file, number)
        except ParamsError as exc:
            problems.append(exc)
            continue
        if value is not None:
            values.append(value)
    return values, problems


def _read_text(path: Path, name: str, check: Callable[[os.stat_result], str] | None) -> str:
    """The file's text, or a ParamsError saying plainly why it cannot be had."""
    try:
        with path.open("rb") as handle:
            problem = check(os.fstat(handle.fileno())) if check is not None else ""
            if problem:
                raise ParamsError(problem, file=name)
            data = handle.read()
    except FileNotFoundError:
        raise ParamsError("no such file", file=name) from None
    except IsADirectoryError:
        raise ParamsError("is a directory, not a params file", file=name) from None
    except PermissionError:
        raise ParamsError("permission denied (cannot read the file)", file=name) from None
    except OSError as exc:
        raise ParamsError(f"cannot read: {exc.strerror or exc}", file=name) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ParamsError("not valid UTF-8 text", file=name, line=line) from None


def _parse_line(line: str, file: str, number: int) -> ParamValue | None:
    """One line: a ParamValue, None for a blank or comment line, or a ParamsError."""
    code = line.split("#", 1)[0]
    if not code.strip():
        return None
    if "=" not in code:
        raise ParamsError(
            "not a 'key = value' line (no '=' before any '#'); comment it out with '#'",
            file=file,
            line=number,
        )
    key_text, _, rest = line.partition("=")
    key = normalize_key(key_text)
    if not is_valid_key(key):
        raise ParamsError(
            f"invalid key{_key_problem(key_text)} (expected letters, digits, '_', '-', "
            "and dots between non-empty parts)",
            file=file,
            line=number,
        )
    return ParamValue(key, _parse_value(rest, file, number), file, number)


def _key_problem(key_text: str) -> str:
    """What is wrong with a key, without quoting it: text before an ``=`` may be a password
    whose line lost its own ``=`` (``database_password s3cr=t``)."""
    text = key_text.strip()
    if not text:
        return ": nothing before the '='"
    if any(c.isspace() for c in text):
        return ": it has a space in it (is an '=' missing?)"
    return ""


def _parse_value(rest: str, file: str, number: int) -> str:
    """The value after '=': a quoted string, or text up to the first '#', trimmed."""
    text = rest.strip()
    if not text or text[0] not in "'\"":
        return text.split("#", 1)[0].strip()
    quote = text[0]
    end = text.find(quote, 1)
    if end < 0:
        raise ParamsError(f"unterminated {quote} quote in the value", file=file, line=number)
    after = text[end + 1 :].strip()
    if after and not after.startswith("#"):
        raise ParamsError(
            "text after the closing quote (only a '#' comment may follow)",
            file=file,
            line=number,
        )
    return text[1:end]
